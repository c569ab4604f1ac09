#!/usr/bin/env node
// Launcher: all logic lives in the compiled CLI so tests can call it directly;
// this only starts it, as fast as it can (issue 5).
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, openSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import Module from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Script } from 'node:vm';

// Copy steps wait on the filesystem far more than on the CPU; libuv's default of
// 4 threads would leave them queued. It must be set before the first asynchronous
// fs call starts libuv's threads (importing built-ins starts none).
process.env.UV_THREADPOOL_SIZE ??= '16';

const DIGEST_BYTES = 32; // sha256, see cacheDigest()
const STALE_AFTER_MS = 2000;
/** What a kept code cache was made by (the byte after the digest): V8 keeps only what the command compiled. */
const MADE_BY_RUN = 1;
const MADE_BY_OTHER = 0;

const args = process.argv.slice(2);
const cli = loadBundle(fileURLToPath(new URL('../dist/cli.cjs', import.meta.url)), args[0] === 'run') ?? { ...(await import('../dist/cli/main.js')), saveCodeCache() {} };
process.exitCode = await cli.main(args);
cli.saveCodeCache();

/**
 * The build's one-file bundle of the CLI (scripts/bundle-cli.mjs), which starts
 * faster than dist/'s ~100 modules; undefined when there is none, or when the
 * modules were compiled after it (plain tsc: the bundle would be stale).
 * V8 compiles it from the code a previous run kept in `<bundle>.cache` when
 * that was kept for these bytes and this V8, and else keeps this run's code
 * there once the command is done — also when a `run` finds a cache made by
 * another command (`--version` first, as the benchmark does): V8 keeps only
 * the functions a command compiled, and `run` is the one whose start counts.
 */
function loadBundle(file, isRun) {
  let source;
  try {
    // dist/ compiled again by tsc after the bundle was made (even one module, as tsc -w or --incremental
    // writes): the bundle is stale, the modules are not. Seconds later: a copy of the package without
    // its times may write them in either order.
    if (newestModule(path.dirname(file)) > statSync(file).mtimeMs + STALE_AFTER_MS) return undefined;
    source = readFileSync(file);
  } catch (err) {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  }
  const cacheFile = `${file}.cache`;
  const cached = readCodeCache(cacheFile, source);
  const script = new Script(Module.wrap(source.toString('utf8')), { filename: file, cachedData: cached?.data });
  const module = { exports: {} };
  script.runInThisContext().call(module.exports, module.exports, Module.createRequire(file), module, file, path.dirname(file));
  const kept = cached !== undefined && !script.cachedDataRejected && (cached.madeBy === MADE_BY_RUN || !isRun);
  const madeBy = isRun ? MADE_BY_RUN : MADE_BY_OTHER;
  return { main: module.exports.main, saveCodeCache: kept ? () => {} : () => writeCodeCache(cacheFile, source, script, madeBy) };
}

/**
 * The newest mtime of the compiled modules below `dir` (ms). Walked by hand:
 * readdirSync's `recursive` costs four times as much, on every start.
 */
function newestModule(dir) {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    if (entry.isDirectory()) newest = Math.max(newest, newestModule(p));
    else if (entry.name.endsWith('.js')) newest = Math.max(newest, statSync(p).mtimeMs);
  }
  return newest;
}

/**
 * A cache file is this digest, a byte saying what made it, then V8's data.
 * The digest covers the bundle, the V8, that byte and the data: V8 itself
 * would accept data made for other source of the same length, or torn by a crash.
 */
function cacheDigest(source, madeBy, data) {
  return createHash('sha256').update(source).update(`\0${process.arch}\0${process.versions.v8}\0${madeBy}\0`).update(data).digest();
}

/** Never required: anything amiss and the bundle is compiled from its source. */
function readCodeCache(cacheFile, source) {
  let buf;
  try {
    buf = readFileSync(cacheFile);
  } catch {
    return undefined;
  }
  const madeBy = buf[DIGEST_BYTES];
  const data = buf.subarray(DIGEST_BYTES + 1);
  return data.length > 0 && buf.subarray(0, DIGEST_BYTES).equals(cacheDigest(source, madeBy, data)) ? { data, madeBy } : undefined;
}

/** Written whole or not at all (a temp file renamed over), and not where the install is read-only. */
function writeCodeCache(cacheFile, source, script, madeBy) {
  // Random, not just the pid: a killed run's leftover would otherwise stop every later run with that pid (1, in containers).
  const tmp = `${cacheFile}.${process.pid}-${randomBytes(4).toString('hex')}.tmp`;
  let fd;
  try {
    fd = openSync(tmp, 'wx'); // before the work below: fails at once in a read-only install
    const data = script.createCachedData();
    writeFileSync(fd, Buffer.concat([cacheDigest(source, madeBy, data), Buffer.from([madeBy]), data]));
    closeSync(fd);
    fd = undefined;
    renameSync(tmp, cacheFile);
  } catch {
    try {
      if (fd !== undefined) closeSync(fd);
      rmSync(tmp, { force: true });
    } catch {
      // Nothing was written, or nothing can be removed: either way nothing to do.
    }
  }
}
