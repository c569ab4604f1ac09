#!/usr/bin/env node
// Thin launcher: all logic lives in the compiled CLI so tests can call it directly.
import { main } from '../dist/cli/main.js';

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
