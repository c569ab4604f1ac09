#!/bin/sh
# shared logging helper
log() { printf '%s %s\n' "$(date -u +%FT%TZ)" "$*"; }
