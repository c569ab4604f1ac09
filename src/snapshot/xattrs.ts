/**
 * Extended attributes through the `attr` package's getfattr/setfattr: Node
 * has no getxattr(2)/setxattr(2). A whole tree is read by one getfattr
 * process and any number of attributes are set by one setfattr process, so
 * the cost is a process per tree, not per file. Symlinks are never followed.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { LayergraphError } from '../errors.js';

/** Attribute name → raw value, for one file. */
export type Xattrs = Map<string, Buffer>;

/** getfattr or setfattr is not installed. */
export class XattrToolsMissingError extends LayergraphError {
  constructor(readonly tool: string) {
    super(
      'USAGE',
      `${tool} was not found; layergraph needs it to read and write extended attributes (overlay whiteouts, file capabilities). ` +
        'Install the `attr` package (Debian/Ubuntu: apt-get install attr; Fedora: dnf install attr; Alpine: apk add attr).',
    );
  }
}

/**
 * Every extended attribute below and on `root`, by path relative to `root`
 * ('' for root itself, `/` separators). Entries without attributes are absent.
 * Names are decoded as UTF-8, as layers need them.
 */
export async function readXattrs(root: string): Promise<Map<string, Xattrs>> {
  const abs = path.resolve(root);
  // -P: do not follow symlinks while walking; -h: read a symlink's own attributes.
  const out = await runTool('getfattr', ['-R', '-P', '-h', '-d', '-m', '-', '-e', 'hex', '--absolute-names', abs]);
  return parseDump(out, abs);
}

/** Sets one attribute on `abs` itself (a symlink is not followed). */
export async function setXattr(abs: string, name: string, value: Buffer): Promise<void> {
  await setXattrs([[abs, new Map([[name, value]])]]);
}

/**
 * Sets the given attributes, with one setfattr process for all of them.
 * Paths are absolute and are not followed when they are symlinks (their
 * parent directories are: callers resolve paths inside a root first).
 */
export async function setXattrs(items: Iterable<readonly [abs: string, attrs: ReadonlyMap<string, Buffer>]>): Promise<void> {
  const parts: Buffer[] = [];
  for (const [abs, attrs] of items) {
    if (attrs.size === 0) continue;
    if (!path.isAbsolute(abs)) throw new Error(`setXattrs: ${abs} is not an absolute path`);
    parts.push(Buffer.from('# file: '), escapeBytes(Buffer.from(abs)), Buffer.from('\n'));
    for (const [name, value] of attrs) {
      parts.push(escapeBytes(Buffer.from(name)), Buffer.from(`=0x${value.toString('hex')}\n`));
    }
    parts.push(Buffer.from('\n'));
  }
  if (parts.length === 0) return;
  await runTool('setfattr', ['-h', '--restore=-'], Buffer.concat(parts));
}

/** Overlayfs's own bookkeeping (opaque, origin, impure, redirect…), never content. */
export function isOverlayXattr(name: string): boolean {
  return name.startsWith('trusted.overlay.') || name.startsWith('user.overlay.');
}

/** `getfattr -d -e hex` output: `# file: <escaped path>` then `name=0x<hex>` lines, blank-line separated. */
function parseDump(dump: Buffer, absRoot: string): Map<string, Xattrs> {
  const result = new Map<string, Xattrs>();
  const prefix = absRoot === '/' ? '/' : `${absRoot}/`;
  let current: Xattrs | undefined;
  for (const line of dump.toString('latin1').split('\n')) {
    if (line === '') continue;
    if (line.startsWith('# file: ')) {
      const file = unescapeBytes(line.slice('# file: '.length)).toString('utf8');
      let rel: string;
      if (file === absRoot) rel = '';
      else if (file.startsWith(prefix)) rel = file.slice(prefix.length);
      else throw new Error(`getfattr reported ${file}, which is not under ${absRoot}`);
      current = new Map();
      result.set(rel, current);
      continue;
    }
    if (line.startsWith('#')) continue;
    if (!current) throw new Error(`getfattr output starts with an attribute line: ${line}`);
    const eq = line.indexOf('=');
    const name = unescapeBytes(eq === -1 ? line : line.slice(0, eq)).toString('utf8');
    const raw = eq === -1 ? '' : line.slice(eq + 1);
    if (raw !== '' && !/^0x([0-9a-fA-F]{2})*$/.test(raw)) throw new Error(`getfattr gave a value that is not hex for ${name}: ${raw}`);
    current.set(name, Buffer.from(raw.slice(2), 'hex'));
  }
  return result;
}

/**
 * getfattr writes bytes that are not printable ASCII, and the backslash, as
 * `\ooo`; setfattr --restore reads the same. Run in the C locale so every
 * byte over 0x7f is escaped too and names come back byte for byte.
 */
function unescapeBytes(latin1: string): Buffer {
  const bytes: number[] = [];
  for (let i = 0; i < latin1.length; i++) {
    const c = latin1.charCodeAt(i);
    if (c === 0x5c && /^[0-7]{3}$/.test(latin1.slice(i + 1, i + 4))) {
      bytes.push(parseInt(latin1.slice(i + 1, i + 4), 8));
      i += 3;
    } else bytes.push(c);
  }
  return Buffer.from(bytes);
}

function escapeBytes(raw: Buffer): Buffer {
  let s = '';
  for (const b of raw) {
    s += b > 0x20 && b < 0x7f && b !== 0x5c && b !== 0x3d ? String.fromCharCode(b) : `\\${b.toString(8).padStart(3, '0')}`;
  }
  return Buffer.from(s, 'latin1');
}

async function runTool(tool: string, args: string[], input?: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn(tool, args, { env: { ...process.env, LC_ALL: 'C' }, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    child.on('error', (e: NodeJS.ErrnoException) => reject(e.code === 'ENOENT' ? new XattrToolsMissingError(tool) : e));
    child.on('close', (code) => {
      if (code === 0) resolve(Buffer.concat(out));
      else reject(new Error(`${tool} ${args.join(' ')} failed (exit ${code}): ${Buffer.concat(err).toString().trim()}`));
    });
    child.stdin.on('error', () => undefined); // a tool that exits early: its exit code says why
    child.stdin.end(input);
  });
}
