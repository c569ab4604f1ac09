#!/usr/bin/env node
// Thin launcher: all logic lives in the compiled CLI so tests can call it directly.
// Copy steps wait on the filesystem far more than on the CPU; libuv's default of
// 4 threads would leave them queued. It must be set before the first fs call.
process.env.UV_THREADPOOL_SIZE ??= '16';
const { main } = await import('../dist/cli/main.js');

process.exitCode = await main(process.argv.slice(2));
