/**
 * Who a `run` step runs as: `user` as an image gives it (`''`, `name`, `uid`,
 * `name:group`, `uid:gid`), looked up in the image's own /etc/passwd and
 * /etc/group, never the host's, with the rules runc's GetExecUser (and so
 * Docker) applies:
 *
 * - a name must be in passwd; a number need not be (its group is then 0);
 * - without a group, the primary group is passwd's and the supplementary
 *   groups are those listing the user as a member;
 * - with a group, that group only; a group name must be in /etc/group.
 */
import { readFile, realpath } from 'node:fs/promises';
import { RuntimeError } from '../errors.js';
import { isMissing } from '../util/fs-read.js';
import { secureJoin } from '../util/secure-join.js';

export interface ImageUser {
  uid: number;
  gid: number;
  additionalGids: number[];
  /** From passwd; `/` when the user has no entry. */
  home: string;
}

const MAX_ID = 2 ** 31 - 1;

export async function resolveImageUser(rootfs: string, user: string, runtime: string): Promise<ImageUser> {
  const fail = (why: string) => new RuntimeError(runtime, `user ${JSON.stringify(user)}: ${why}`);
  const colon = user.indexOf(':');
  const userArg = (colon < 0 ? user : user.slice(0, colon)) || '0';
  const groupArg = colon < 0 ? '' : user.slice(colon + 1);
  const uidArg = parseId(userArg);
  const gidArg = parseId(groupArg);
  if (uidArg === 'out of range' || gidArg === 'out of range') throw fail(`ids must be between 0 and ${MAX_ID}`);

  const root = await realpath(rootfs);
  const passwd = (await readImageFile(root, '/etc/passwd')).map(parsePasswd).filter(isEntry);
  const entry = passwd.find((p) => p.name === userArg || (uidArg !== null && p.uid === uidArg));
  if (!entry && uidArg === null) throw fail(`no user named ${JSON.stringify(userArg)} in the image's /etc/passwd`);
  const result: ImageUser = { uid: entry?.uid ?? (uidArg as number), gid: entry?.gid ?? 0, additionalGids: [], home: entry?.home || '/' };

  const needGroups = groupArg !== '' || entry !== undefined;
  const groups = needGroups ? (await readImageFile(root, '/etc/group')).map(parseGroup).filter(isEntry) : [];
  if (groupArg !== '') {
    const group = groups.find((g) => g.name === groupArg || (gidArg !== null && g.gid === gidArg));
    if (!group && gidArg === null) throw fail(`no group named ${JSON.stringify(groupArg)} in the image's /etc/group`);
    result.gid = group?.gid ?? (gidArg as number);
  } else if (entry) {
    result.additionalGids = [...new Set(groups.filter((g) => g.members.includes(entry.name)).map((g) => g.gid))];
  }
  return result;
}

function parseId(s: string): number | null | 'out of range' {
  if (!/^[0-9]+$/.test(s)) return null;
  const n = Number(s);
  return n <= MAX_ID ? n : 'out of range';
}

/** The lines of a file as a process in the image would read it (symlinks resolved inside the root); none when missing. */
async function readImageFile(root: string, unsafePath: string): Promise<string[]> {
  try {
    const text = await readFile(await secureJoin(root, unsafePath, { followLast: true }), 'utf8');
    return text.split('\n');
  } catch (err) {
    if (isMissing(err)) return [];
    throw err;
  }
}

interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

interface GroupEntry {
  name: string;
  gid: number;
  members: string[];
}

/** `name:password:uid:gid:gecos:home:shell`; malformed lines are skipped, as libc does. */
function parsePasswd(line: string): PasswdEntry | undefined {
  const f = line.split(':');
  if (f.length < 4 || line.startsWith('#')) return undefined;
  const uid = parseId(f[2]!);
  const gid = parseId(f[3]!);
  if (typeof uid !== 'number' || typeof gid !== 'number') return undefined;
  return { name: f[0]!, uid, gid, home: f[5] ?? '' };
}

/** `name:password:gid:member,member`. */
function parseGroup(line: string): GroupEntry | undefined {
  const f = line.split(':');
  if (f.length < 3 || line.startsWith('#')) return undefined;
  const gid = parseId(f[2]!);
  if (typeof gid !== 'number') return undefined;
  return { name: f[0]!, gid, members: (f[3] ?? '').split(',').filter(Boolean) };
}

function isEntry<T>(e: T | undefined): e is T {
  return e !== undefined;
}
