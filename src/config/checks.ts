/**
 * What the schema cannot say: references between images and steps, unique
 * ids and tags, copy sources that leave the context, ranges. Runs on data the
 * schema may have rejected, so it reads it defensively and checks only what
 * is well-formed enough to check; the schema reports the rest.
 */
import type { ConfigIssue, SourcePos } from '../errors.js';
import { formatPath, type Segment, type SourceFile } from './positions.js';
import { IMAGE_NAME, STEP_ID, imageNames, isRecord } from './raw.js';
import { isRegistryRef, referenceProblem } from './reference.js';
import { parseImageReference } from '../registry/reference.js';
import { contextSourceProblem, parseChown, parseExpose } from './values.js';

export function semanticIssues(data: unknown, src: SourceFile): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  if (!isRecord(data) || !isRecord(data.images)) return issues;
  const images = data.images;
  const names = imageNames(images, src);
  const ctx: Ctx = { src, issues, names, known: new Set(names), tags: new Map() };
  for (const name of names) {
    const at: Segment[] = ['images', name];
    if (name === 'scratch') {
      issues.push(src.issue(src.keyPos(at), at, '`scratch` cannot be the name of an image: `from: scratch` means an empty base image'));
    }
    const image = images[name];
    if (isRecord(image)) checkImage(ctx, name, image);
  }
  return issues;
}

interface Ctx {
  src: SourceFile;
  issues: ConfigIssue[];
  names: string[];
  known: ReadonlySet<string>;
  /** First image and place each tag was given. */
  tags: Map<string, { image: string; pos: SourcePos }>;
}

function checkImage(ctx: Ctx, name: string, image: Record<string, unknown>): void {
  const { src, issues } = ctx;
  const at: Segment[] = ['images', name];
  const from = image.from;
  if (typeof from === 'string' && IMAGE_NAME.test(from) && from !== 'scratch') {
    const fromAt = [...at, 'from'];
    if (from === name) issues.push(src.issue(src.valuePos(fromAt), fromAt, 'an image cannot be built from itself'));
    else if (!ctx.known.has(from)) {
      issues.push(
        src.issue(
          src.valuePos(fromAt),
          fromAt,
          `image \`${name}\` is built from \`${from}\`, which is not an image of this file (${imagesList(ctx)}); for a registry image, give its tag, like \`${from}:latest\``,
        ),
      );
    }
  }
  if (typeof from === 'string' && isRegistryRef(from)) {
    const fromAt = [...at, 'from'];
    try {
      parseImageReference(from);
    } catch (err) {
      issues.push(src.issue(src.valuePos(fromAt), fromAt, `\`from: ${from}\` is not a valid image reference: ${(err as Error).message}`));
    }
  }
  if (Array.isArray(image.expose)) {
    image.expose.forEach((item, i) => {
      if (typeof item !== 'string' || !/^[0-9]+(\/(tcp|udp|sctp))?$/.test(item)) return; // the schema's
      const parsed = parseExpose(item);
      const itemAt = [...at, 'expose', i];
      if (!parsed.ok) issues.push(src.issue(src.valuePos(itemAt), itemAt, `\`${formatPath(itemAt)}\` is ${JSON.stringify(item)}; expected ${parsed.problem}`));
    });
  }
  if (Array.isArray(image.tags)) image.tags.forEach((tag, i) => checkTag(ctx, name, tag, [...at, 'tags', i]));
  if (Array.isArray(image.steps)) checkSteps(ctx, name, image.steps);
}

function checkTag(ctx: Ctx, image: string, tag: unknown, at: Segment[]): void {
  const { src, issues } = ctx;
  if (typeof tag !== 'string' || !tag) return;
  const pos = src.valuePos(at);
  const problem = referenceProblem(tag);
  if (problem) {
    issues.push(src.issue(pos, at, `tag ${JSON.stringify(tag)} is not a valid image reference: ${problem}`));
    return;
  }
  const first = ctx.tags.get(tag);
  if (first) {
    const where = src.where(first.pos);
    const message =
      first.image === image
        ? `tag ${JSON.stringify(tag)} is listed twice (first at ${where})`
        : `tag ${JSON.stringify(tag)} is also a tag of image \`${first.image}\` (at ${where})`;
    issues.push(src.issue(pos, at, message));
    return;
  }
  ctx.tags.set(tag, { image, pos });
  if (tag !== image && ctx.known.has(tag)) {
    issues.push(src.issue(pos, at, `tag ${JSON.stringify(tag)} is the name of image \`${tag}\`, which the output already names so`));
  }
}

function checkSteps(ctx: Ctx, image: string, steps: unknown[]): void {
  const { src, issues } = ctx;
  const at: Segment[] = ['images', image, 'steps'];
  // Ids first, so `needs` can be checked against all of them.
  const ids = new Map<string, SourcePos>();
  let allIds = true;
  steps.forEach((step, i) => {
    const id = isRecord(step) ? step.id : undefined;
    if (typeof id !== 'string' || !STEP_ID.test(id)) {
      allIds = false;
      return;
    }
    const idAt = [...at, i, 'id'];
    const first = ids.get(id);
    if (first) {
      issues.push(src.issue(src.valuePos(idAt), idAt, `duplicate step id \`${id}\` in image \`${image}\` (first defined at ${src.where(first)})`));
    } else ids.set(id, src.valuePos(idAt));
  });

  steps.forEach((step, i) => {
    if (!isRecord(step)) return;
    const stepAt = [...at, i];
    const label = typeof step.id === 'string' ? `step \`${step.id}\`` : 'step';
    checkStepKind(ctx, step, stepAt);
    const from = step.from;
    if (typeof from === 'string' && IMAGE_NAME.test(from)) {
      const fromAt = [...stepAt, 'from'];
      if (from === image) issues.push(src.issue(src.valuePos(fromAt), fromAt, `a step cannot copy from its own image (\`${image}\`)`));
      else if (!ctx.known.has(from)) {
        issues.push(src.issue(src.valuePos(fromAt), fromAt, `${label} copies from \`${from}\`, which is not an image of this file (${imagesList(ctx)})`));
      }
    }
    if (from === undefined) {
      const copy = step.copy;
      const sources: Array<[unknown, Segment[]]> =
        typeof copy === 'string' ? [[copy, [...stepAt, 'copy']]] : Array.isArray(copy) ? copy.map((c, j) => [c, [...stepAt, 'copy', j]]) : [];
      for (const [source, sourceAt] of sources) {
        const problem = typeof source === 'string' && source ? contextSourceProblem(source) : undefined;
        // Named like the build names steps (`api/src`): the same source may be in many steps.
        const owner = `${image}/${typeof step.id === 'string' && STEP_ID.test(step.id) ? step.id : `steps[${i}]`}`;
        if (problem) issues.push(src.issue(src.valuePos(sourceAt), sourceAt, `${owner}: copy source \`${source as string}\` ${problem}`));
      }
    }
    const to = step.to;
    if (typeof to === 'string' && to.startsWith('/') && to.split('/').includes('..')) {
      const toAt = [...stepAt, 'to'];
      issues.push(src.issue(src.valuePos(toAt), toAt, `\`${formatPath(toAt)}\` is "${to}"; \`..\` would leave the image root: write the path without it`));
    }
    const chown = step.chown;
    if ((typeof chown === 'string' && /^[0-9]+(:[0-9]+)?$/.test(chown)) || (typeof chown === 'number' && Number.isInteger(chown) && chown >= 0)) {
      const parsed = parseChown(chown);
      const chownAt = [...stepAt, 'chown'];
      if (!parsed.ok) issues.push(src.issue(src.valuePos(chownAt), chownAt, `\`${formatPath(chownAt)}\` is ${JSON.stringify(chown)}; expected ${parsed.problem}`));
    }
    if (Array.isArray(step.needs) && allIds) {
      const seen = new Set<string>();
      step.needs.forEach((need, j) => {
        if (typeof need !== 'string') return;
        const needAt = [...stepAt, 'needs', j];
        const pos = src.valuePos(needAt);
        if (need === step.id) issues.push(src.issue(pos, needAt, 'a step cannot need itself'));
        else if (!ids.has(need)) {
          issues.push(src.issue(pos, needAt, `${label} needs \`${need}\`, which is not a step of image \`${image}\` (steps: ${someOf([...ids.keys()])})`));
        } else if (seen.has(need)) issues.push(src.issue(pos, needAt, `${label} needs \`${need}\` twice`));
        seen.add(need);
      });
    }
  });
}

const COPY_KEYS = ['copy', 'to', 'from', 'link', 'chmod', 'chown'];
const RUN_KEYS = ['run', 'env', 'workdir', 'user', 'network'];

/** A step copies or runs, never both: a key of the other kind is a mistake worth pointing at. */
function checkStepKind(ctx: Ctx, step: Record<string, unknown>, stepAt: Segment[]): void {
  const { src, issues } = ctx;
  const runs = step.run !== undefined;
  for (const key of runs ? COPY_KEYS : RUN_KEYS.slice(1)) {
    if (step[key] === undefined) continue;
    const keyAt = [...stepAt, key];
    issues.push(
      src.issue(
        src.keyPos(keyAt),
        keyAt,
        runs
          ? `\`${key}\` does not go with \`run\`: a step either copies (\`copy\`, \`to\`, ...) or runs a command; make it two steps`
          : `\`${key}\` belongs to \`run\` steps, and this step has no \`run\``,
      ),
    );
  }
}

function imagesList(ctx: Ctx): string {
  return `images: ${someOf(ctx.names)}`;
}

/** A list for a message: a file with thousands of names would otherwise repeat them all in every message. */
function someOf(names: readonly string[], max = 10): string {
  return names.length <= max ? names.join(', ') : `${names.slice(0, max).join(', ')} and ${names.length - max} more`;
}
