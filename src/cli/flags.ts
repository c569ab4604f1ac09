/**
 * Commands and flags, declared as data and parsed by one function that tests
 * can call. Help text is generated from the same declarations.
 */
import { parseArgs } from 'node:util';
import { UsageError } from '../errors.js';

interface FlagSpec {
  type: 'string' | 'boolean';
  multiple?: boolean;
  short?: string;
  value?: string;
  help: string;
}

export const COMMANDS = {
  run: {
    usage: 'layergraph run <build.yaml> [flags]',
    summary: 'build the images of a build file into an OCI image layout',
    flags: {
      target: { type: 'string', multiple: true, short: 't', value: 'image', help: 'build only this image (and what it needs); repeatable' },
      out: { type: 'string', short: 'o', value: 'dir', help: 'OCI image layout to write (default: ./out); the same as --output oci:<dir>' },
      output: {
        type: 'string',
        multiple: true,
        value: 'kind:path',
        help: 'where the images go: oci:<dir> (default oci:out), oci-archive:<file>, docker-archive:<file> (for docker load); repeatable',
      },
      'cache-dir': { type: 'string', value: 'dir', help: 'cache directory (default: $XDG_CACHE_HOME/layergraph or ~/.cache/layergraph)' },
      jobs: { type: 'string', short: 'j', value: 'n', help: 'steps to run at once (default: number of CPUs)' },
      report: { type: 'string', multiple: true, value: 'file', help: 'write a report: .json, .md or .xml (JUnit) by extension; repeatable' },
      'expect-cached': { type: 'boolean', help: 'exit 3 when any step was not cached (for pipelines that expect a no-op build)' },
      progress: { type: 'string', value: 'mode', help: 'auto | tty | plain | quiet (default: auto)' },
      snapshotter: { type: 'string', value: 'name', help: 'how run steps get their root: auto | overlay | copy (default: auto, overlay where it can mount)' },
      runtime: { type: 'string', value: 'name', help: 'what runs run steps: auto | runc | crun | chroot (default: auto, the first installed)' },
      'cache-from': { type: 'string', multiple: true, value: 'dir:<path>|registry:<ref>', help: 'a shared cache to hit from when the local one misses; repeatable' },
      'cache-to': { type: 'string', value: 'dir:<path>|registry:<ref>', help: "write this build's step records and layers there, for other machines" },
      push: { type: 'boolean', help: 'push every image to the registries its tags name (images with push: true always are)' },
      'registry-config': { type: 'string', value: 'file', help: 'registry credentials: a Docker config.json (default: $DOCKER_CONFIG/config.json, ~/.docker/config.json)' },
      'insecure-registry': { type: 'string', multiple: true, value: 'host[:port]', help: 'speak plain HTTP to this registry (localhost and 127.0.0.1 always); repeatable' },
    },
  },
  plan: {
    usage: 'layergraph plan <build.yaml> [flags]',
    summary: 'show the graph and which steps would hit, from their inputs alone: nothing is built or written',
    flags: {
      format: { type: 'string', short: 'f', value: 'fmt', help: 'text | json | dot | mermaid (default: text)' },
      target: { type: 'string', multiple: true, short: 't', value: 'image', help: 'plan only this image (and what it needs); repeatable' },
      out: { type: 'string', short: 'o', value: 'dir', help: 'the --out of the build to plan, left out of the context as the build does (default: ./out)' },
      output: { type: 'string', multiple: true, value: 'kind:path', help: 'the --output of the build to plan, left out of the context likewise; repeatable' },
      'cache-dir': { type: 'string', value: 'dir', help: 'cache directory to check (default: $XDG_CACHE_HOME/layergraph or ~/.cache/layergraph)' },
      'cache-from': { type: 'string', multiple: true, value: 'dir:<path>|registry:<ref>', help: 'shared caches the build would hit from (their records are read, nothing else)' },
      'registry-config': { type: 'string', value: 'file', help: 'registry credentials: a Docker config.json' },
      'insecure-registry': { type: 'string', multiple: true, value: 'host[:port]', help: 'speak plain HTTP to this registry; repeatable' },
    },
  },
  validate: {
    usage: 'layergraph validate <build.yaml>',
    summary: 'check a build file (schema, references, cycles, copy sources) without building',
    flags: {},
  },
  unpack: {
    usage: 'layergraph unpack <oci-layout>[:<ref>] <dir>',
    summary: "apply an image's layers from an OCI layout into a root filesystem",
    flags: {},
  },
  cache: {
    usage: 'layergraph cache du|prune|verify [flags]',
    summary: 'the cache: size by kind (du), give space back (prune), check every blob (verify)',
    flags: {
      'cache-dir': { type: 'string', value: 'dir', help: 'cache directory (default: $XDG_CACHE_HOME/layergraph or ~/.cache/layergraph)' },
      format: { type: 'string', short: 'f', value: 'fmt', help: 'text | json (default: text)' },
      'keep-storage': { type: 'string', value: 'size', help: 'prune: least recently used first, until the cache is at most this big (10GB, 500MiB)' },
      'older-than': { type: 'string', value: 'age', help: 'prune: what no build used for this long (7d, 12h, 30m)' },
      'dry-run': { type: 'boolean', help: 'prune, verify: only say what would be removed' },
    },
  },
} satisfies Record<string, { usage: string; summary: string; flags: Record<string, FlagSpec> }>;

export type CommandName = keyof typeof COMMANDS;

export type ParsedArgs =
  | { command: 'help'; topic?: CommandName }
  | { command: 'version' }
  | {
      command: CommandName;
      /** The first argument: the build file, for `unpack` the layout and ref, for `cache` du, prune or verify. */
      file: string;
      /** Arguments after the first. */
      args: string[];
      values: Record<string, string | string[] | boolean | undefined>;
    };

export function parseCli(argv: string[]): ParsedArgs {
  const [first, ...rest] = argv;
  if (first === undefined || first === '--help' || first === '-h' || first === 'help') {
    const topic = rest[0];
    return topic && topic in COMMANDS ? { command: 'help', topic: topic as CommandName } : { command: 'help' };
  }
  if (first === '--version' || first === '-V' || first === 'version') return { command: 'version' };
  if (!(first in COMMANDS)) {
    throw new UsageError(`unknown command \`${first}\`; commands: ${Object.keys(COMMANDS).join(', ')} (see layergraph --help)`);
  }
  const command = first as CommandName;
  if (rest.includes('--help') || rest.includes('-h')) return { command: 'help', topic: command };
  const flags: Record<string, FlagSpec> = COMMANDS[command].flags;
  let parsed;
  try {
    parsed = parseArgs({
      args: rest,
      options: Object.fromEntries(
        Object.entries(flags).map(([name, f]) => [
          name,
          { type: f.type, ...(f.multiple ? { multiple: true } : {}), ...(f.short ? { short: f.short } : {}) },
        ]),
      ),
      allowPositionals: true,
      strict: true,
    });
  } catch (err) {
    throw new UsageError(`${(err as Error).message.replace(/\. To specify.*$/s, '')} (see layergraph ${command} --help)`);
  }
  const wanted = command === 'unpack' ? 2 : 1;
  const [file, ...extra] = parsed.positionals;
  if (!file || extra.length < wanted - 1) throw new UsageError(`\`${command}\` needs more arguments: ${COMMANDS[command].usage}`);
  if (extra.length > wanted - 1) throw new UsageError(`unexpected argument \`${extra[wanted - 1]}\`: ${COMMANDS[command].usage}`);
  return { command, file, args: extra, values: parsed.values as Record<string, string | string[] | boolean | undefined> };
}

export function helpText(topic?: CommandName): string {
  if (!topic) {
    const cmds = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(10)} ${c.summary}`);
    return [
      'layergraph: build OCI images from a YAML graph of steps, with a layer cache that explains every miss',
      '',
      'Usage: layergraph <command> <build.yaml> [flags]   (unpack: layergraph unpack <oci-layout>[:<ref>] <dir>; cache: layergraph cache du|prune|verify)',
      '',
      'Commands:',
      ...cmds,
      '',
      'Flags: --help (per command: layergraph run --help), --version',
      '',
      'Exit codes: 0 ok, 1 build failed, 2 invalid build file or arguments, 3 steps not cached (--expect-cached), 130 interrupted (SIGINT), 143 terminated (SIGTERM)',
      '',
    ].join('\n');
  }
  const c = COMMANDS[topic];
  const flags: Record<string, FlagSpec> = c.flags;
  const rows = Object.entries(flags).map(([name, f]) => {
    const left = `${f.short ? `-${f.short}, ` : '    '}--${name}${f.value ? ` <${f.value}>` : ''}`;
    return `  ${left.padEnd(28)} ${f.help}`;
  });
  return [`Usage: ${c.usage}`, '', c.summary, ...(rows.length ? ['', 'Flags:', ...rows] : []), ''].join('\n');
}
