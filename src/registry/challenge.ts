/**
 * `WWW-Authenticate` challenges (RFC 7235) as registries send them:
 * `Bearer realm="https://auth.example/token",service="registry",scope="repository:app:pull"`
 * or `Basic realm="Registry"`. A header may hold several challenges; the
 * scheme is case-insensitive, parameter values are tokens or quoted strings.
 * token68 credentials (`Negotiate abc==`) are not read: registries do not send them.
 */

export interface AuthChallenge {
  /** Lowercased: `bearer`, `basic`, … */
  scheme: string;
  /** Parameter names lowercased. */
  params: Record<string, string>;
}

/** Every challenge in the header, in order; an empty list for an empty or unreadable header. */
export function parseWwwAuthenticate(header: string): AuthChallenge[] {
  const challenges: AuthChallenge[] = [];
  let i = 0;
  let current: AuthChallenge | undefined;
  while (i < header.length) {
    i = skip(header, i, /[\s,]/);
    const token = readWhile(header, i, /[^\s,=]/);
    if (!token) break;
    i += token.length;
    const afterSpace = skip(header, i, /\s/);
    if (header[afterSpace] === '=' && current) {
      i = skip(header, afterSpace + 1, /\s/);
      let value: string;
      if (header[i] === '"') [value, i] = readQuoted(header, i);
      else {
        value = readWhile(header, i, /[^\s,]/);
        i += value.length;
      }
      current.params[token.toLowerCase()] = value;
    } else {
      current = { scheme: token.toLowerCase(), params: {} };
      challenges.push(current);
      i = afterSpace;
    }
  }
  return challenges;
}

function readQuoted(s: string, start: number): [string, number] {
  let out = '';
  let i = start + 1;
  while (i < s.length && s[i] !== '"') {
    if (s[i] === '\\' && i + 1 < s.length) i++;
    out += s[i];
    i++;
  }
  return [out, i + 1];
}

function skip(s: string, i: number, re: RegExp): number {
  while (i < s.length && re.test(s[i]!)) i++;
  return i;
}

function readWhile(s: string, i: number, re: RegExp): string {
  const start = i;
  while (i < s.length && re.test(s[i]!)) i++;
  return s.slice(start, i);
}
