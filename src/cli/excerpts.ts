/**
 * Issues found after loading (cycles, copy sources, destinations) know their
 * position but not the text around it; read the file once and add it.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { ConfigIssue } from '../errors.js';
import { sourceExcerpt } from '../config/positions.js';

export async function withExcerpts(issues: ConfigIssue[]): Promise<ConfigIssue[]> {
  const texts = new Map<string, string | undefined>();
  const out: ConfigIssue[] = [];
  for (const issue of issues) {
    if (issue.excerpt) {
      out.push(issue);
      continue;
    }
    const file = path.resolve(issue.pos.file);
    if (!texts.has(file)) texts.set(file, await readFile(file, 'utf8').catch(() => undefined));
    const text = texts.get(file);
    out.push(text === undefined ? issue : { ...issue, excerpt: sourceExcerpt(text, issue.pos.line, issue.pos.col) });
  }
  return out;
}
