/**
 * A build file can come from anyone: a value quoted back in a message may be
 * megabytes long or hold terminal escapes and NUL bytes. Messages and excerpts
 * show such text shortened and with control characters made visible, so what
 * reaches a terminal or a CI log is one readable line.
 */

/** Longer messages keep their start and their end (which says what was expected), and lose the middle. */
const MAX_MESSAGE = 600;
const KEEP_HEAD = 400;
const KEEP_TAIL = 160;

/** `text` on one line, control and direction-changing characters escaped (`\u0000`), at most about 600 characters. */
export function printableMessage(text: string): string {
  const escaped = text.replace(UNPRINTABLE, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  if (escaped.length <= MAX_MESSAGE) return escaped;
  const head = cutBefore(escaped, KEEP_HEAD);
  const tail = escaped.slice(cutBefore(escaped, escaped.length - KEEP_TAIL).length);
  return `${head}…(${escaped.length - head.length - tail.length} characters left out)…${tail}`;
}

/**
 * A source line for an excerpt: each unprintable character becomes one
 * `\uFFFD`, so columns still line up with the caret. Tabs stay tabs.
 */
export function printableLine(line: string): string {
  return line.replace(UNPRINTABLE_BUT_TAB, '\uFFFD');
}

// C0 and C1 controls, DEL, line and paragraph separators, the bidirectional overrides and isolates, and BOMs.
const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]/g;
const UNPRINTABLE_BUT_TAB = /[\u0000-\u0008\u000a-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]/g;

/** `text` cut to at most `n` code units, never between the two halves of a surrogate pair. */
function cutBefore(text: string, n: number): string {
  const code = text.charCodeAt(n - 1);
  return text.slice(0, code >= 0xd800 && code <= 0xdbff ? n - 1 : n);
}
