# Shared by every service (copied once, as a linked layer, into each image).
# log <message>: one line on stdout, prefixed with the service's name.
log() {
  echo "[${SERVICE:-service}] $*"
}
