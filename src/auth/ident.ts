// User-name maps in pg_ident.conf syntax, and the name check of certificate
// authentication that uses them.
//
// Reference: https://www.postgresql.org/docs/current/auth-username-maps.html
//
// A map line is `MAPNAME SYSTEM-USERNAME DATABASE-USERNAME`. For Postern the
// "system user" is a name taken from the client's TLS certificate. As with
// pg_hba.conf, callers must refuse the whole file when `errors` is not empty.

import { type AuthFileError, type AuthToken, entryError, fail, nameOrRegex, rejectInclude, tokenizeAuthFile, tryLine } from './hba.ts';

export type IdentError = AuthFileError;

export type SystemUserMatcher =
  | { readonly kind: 'name'; readonly name: string }
  | { readonly kind: 'regex'; readonly pattern: string; readonly re: RegExp };

export type DbUserMatcher =
  | { readonly kind: 'all' }
  /** `name` may contain `\1`, replaced by the system-user regex's first capture. */
  | { readonly kind: 'name'; readonly name: string }
  | { readonly kind: 'regex'; readonly pattern: string; readonly re: RegExp };

export interface IdentLine {
  readonly fileName: string;
  readonly line: number;
  readonly mapName: string;
  readonly systemUser: SystemUserMatcher;
  readonly dbUser: DbUserMatcher;
  readonly text: string;
}

/** Lines grouped by map name, each group in file order. */
export type IdentMaps = ReadonlyMap<string, readonly IdentLine[]>;

export interface IdentParseResult {
  readonly maps: IdentMaps;
  readonly errors: IdentError[];
}

/** Parses pg_ident.conf text. Never throws. */
export function parseIdent(text: string, fileName: string): IdentParseResult {
  const maps = new Map<string, IdentLine[]>();
  const errors: IdentError[] = [];
  for (const entry of tokenizeAuthFile(text)) {
    if (entry.problem !== undefined) {
      errors.push(entryError(fileName, entry, entry.problem));
      continue;
    }
    const r = tryLine((): IdentLine => {
      rejectInclude(entry);
      const eol = entry.text.length + 1;
      const [mapField, systemField, dbField, extra] = entry.fields;
      const one = (f: typeof mapField): AuthToken => {
        if (f === undefined) return fail(eol, 'missing entry at end of line');
        if (f.tokens.length > 1) fail(f.tokens[1]!.column, 'multiple values in ident field');
        return f.tokens[0]!;
      };
      const mapToken = one(mapField);
      const systemToken = one(systemField);
      const dbToken = one(dbField);
      // Postgres ignores anything after the third field; a fourth field is
      // almost certainly a mistake (a space inside an unquoted name), so
      // Postern reports it.
      if (extra !== undefined)
        fail(
          extra.column,
          'extra entry at end of line',
          'An ident line has exactly three fields: MAPNAME SYSTEM-USERNAME DATABASE-USERNAME.',
        );
      const systemUser = parseSystemUser(systemToken);
      const dbUser = parseDbUser(dbToken);
      if (systemUser.kind === 'regex' && dbUser.kind === 'name' && dbUser.name.includes('\\1') && captureGroups(systemUser.re) === 0) {
        // Postgres finds this at connection time and denies; at load time it is a clearer error.
        fail(
          dbToken.column,
          `regular expression "${systemUser.pattern}" has no subexpressions as requested by backreference in "${dbUser.name}"`,
        );
      }
      return { fileName, line: entry.line, mapName: mapToken.value, systemUser, dbUser, text: entry.text };
    });
    if ('problem' in r) {
      errors.push(entryError(fileName, entry, r.problem));
      continue;
    }
    const list = maps.get(r.ok.mapName);
    if (list === undefined) maps.set(r.ok.mapName, [r.ok]);
    else list.push(r.ok);
  }
  return { maps, errors };
}

function parseSystemUser(t: AuthToken): SystemUserMatcher {
  return nameOrRegex(t);
}

function parseDbUser(t: AuthToken): DbUserMatcher {
  if (!t.quoted && t.value === 'all') return { kind: 'all' };
  if (!t.quoted && t.value.startsWith('+')) {
    fail(
      t.column,
      `group membership ("${t.value}") is not supported by Postern`,
      'Postern has no role membership data; list the users or use a regular expression.',
    );
  }
  return nameOrRegex(t);
}

function captureGroups(re: RegExp): number {
  // An alternative that matches the empty string reports every group.
  return new RegExp(`${re.source}|`, re.flags).exec('')!.length - 1;
}

type LineVerdict = 'match' | 'no-match' | 'error';

function checkLine(line: IdentLine, systemUser: string, dbUser: string): LineVerdict {
  const sys = line.systemUser;
  let target = line.dbUser;
  if (sys.kind === 'name') {
    if (sys.name !== systemUser) return 'no-match';
  } else {
    const m = sys.re.exec(systemUser);
    if (m === null) return 'no-match';
    if (target.kind === 'name') {
      const at = target.name.indexOf('\\1');
      if (at >= 0) {
        // Only the first \1 is replaced, and the result is compared
        // literally (never as a keyword or pattern), as in Postgres.
        const group = m[1];
        if (group === undefined) return 'error';
        target = { kind: 'name', name: target.name.slice(0, at) + group + target.name.slice(at + 2) };
      }
    }
  }
  switch (target.kind) {
    case 'all':
      return 'match';
    case 'regex':
      return target.re.test(dbUser) ? 'match' : 'no-match';
    case 'name':
      return target.name === dbUser ? 'match' : 'no-match';
    default:
      target satisfies never;
      return 'no-match';
  }
}

/**
 * True when map `mapName` lets `systemUser` connect as `dbUser`. Lines are
 * tried in file order; as in Postgres, a line whose `\1` refers to a capture
 * that did not take part in the match denies at once.
 */
export function identAllows(maps: IdentMaps, mapName: string, systemUser: string, dbUser: string): boolean {
  for (const line of maps.get(mapName) ?? []) {
    const v = checkLine(line, systemUser, dbUser);
    if (v === 'match') return true;
    if (v === 'error') return false;
  }
  return false;
}

// ---------------------------------------------------------------- certificates

/** The parts of Node's tls.PeerCertificate that name the client. */
export interface PeerCertNames {
  readonly subject?: { readonly CN?: string | readonly string[] | undefined } | null | undefined;
  /** Node's rendering: `DNS:a.example, IP Address:10.0.0.1, email:b@c.example`; values with special characters are JSON-quoted. */
  readonly subjectaltname?: string | undefined;
}

/** The certificate's first Common Name, as Postgres uses it; undefined when absent or unusable. */
export function certCommonName(cert: PeerCertNames): string | undefined {
  const cn = cert.subject?.CN;
  const first = typeof cn === 'string' ? cn : cn?.[0];
  return first === undefined || !usableName(first) ? undefined : first;
}

function usableName(s: string): boolean {
  // Postgres refuses certificates whose CN has an embedded NUL; an empty name cannot name anyone.
  return s.length > 0 && !s.includes('\0');
}

/** Splits Node's subjectaltname string into [type, value] pairs. */
export function parseSubjectAltName(s: string): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  let i = 0;
  while (i < s.length) {
    const colon = s.indexOf(':', i);
    if (colon < 0) break;
    const type = s.slice(i, colon);
    let value: string;
    let end: number;
    if (s[colon + 1] === '"') {
      // JSON string: find its closing quote, skipping escaped characters.
      let k = colon + 2;
      while (k < s.length && s[k] !== '"') k += s[k] === '\\' ? 2 : 1;
      end = k + 1;
      try {
        value = JSON.parse(s.slice(colon + 1, end)) as string;
      } catch {
        break;
      }
    } else {
      const sep = s.indexOf(', ', colon + 1);
      end = sep < 0 ? s.length : sep;
      value = s.slice(colon + 1, end);
    }
    out.push([type, value]);
    if (s.startsWith(', ', end)) i = end + 2;
    else break;
  }
  return out;
}

/**
 * Names a certificate offers as "system user" for an ident map: the CN
 * first (what Postgres uses), then DNS and email subject alternative names in
 * certificate order. Offering SANs is a Postern extension: a certificate
 * whose identity lives in a SAN (as with most modern issuers) can then be
 * mapped to a database user.
 */
export function certCandidateNames(cert: PeerCertNames): string[] {
  const names: string[] = [];
  const cn = certCommonName(cert);
  if (cn !== undefined) names.push(cn);
  if (typeof cert.subjectaltname === 'string') {
    for (const [type, value] of parseSubjectAltName(cert.subjectaltname)) {
      if ((type === 'DNS' || type === 'email') && usableName(value) && !names.includes(value)) names.push(value);
    }
  }
  return names;
}

/**
 * The name check of `cert` authentication (and of clientcert=verify-full).
 * Without a map, the CN must equal the database user exactly, as in
 * Postgres. With a map, any candidate name (see certCandidateNames) that the
 * map allows is enough. The caller has already verified the chain.
 */
export function certAllows(maps: IdentMaps, mapName: string | undefined, cert: PeerCertNames, dbUser: string): boolean {
  if (mapName === undefined || mapName === '') return certCommonName(cert) === dbUser;
  for (const name of certCandidateNames(cert)) {
    if (identAllows(maps, mapName, name, dbUser)) return true;
  }
  return false;
}
