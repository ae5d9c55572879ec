// Client authentication rules in pg_hba.conf syntax: the file lexer (shared
// with ident.ts), the rule parser, first-match lookup, and Postgres's exact
// FATAL wording when no line matches or a `reject` line does.
//
// Reference: https://www.postgresql.org/docs/current/auth-pg-hba-conf.html
//
// What Postern accepts differs from Postgres only where Postern cannot know
// what Postgres knows (role membership, its host's interfaces, DNS it does not
// do, GSSAPI) or has no such listener (Unix sockets). Such lines are reported
// as errors with a reason instead of being silently dropped or approximated.
//
// Loading contract: `parseHba` returns the rules of every valid line AND an
// error for every invalid one. Callers must refuse the whole file when
// `errors` is not empty, as Postgres does: dropping one bad `reject` line
// would let the next, more permissive line match instead.

import { isIP } from 'node:net';
import { PosternError } from '../errors.ts';

// ---------------------------------------------------------------- lexer

/** One token of a field. `quoted` is Postgres's notion: the token began with a double quote. */
export interface AuthToken {
  readonly value: string;
  readonly quoted: boolean;
  /** 1-based column in the entry text. */
  readonly column: number;
}

/** A whitespace-separated field: one token, or a comma-separated list of them. */
export interface AuthField {
  readonly tokens: readonly AuthToken[];
  readonly column: number;
}

/** A logical line (backslash continuations joined) that has at least one field. */
export interface AuthEntry {
  /** 1-based number of the entry's first physical line (what Postgres reports). */
  readonly line: number;
  /** The logical line as written, continuations joined, for logs. */
  readonly text: string;
  readonly fields: readonly AuthField[];
  /** A lexical problem; when set, `fields` must not be interpreted. */
  readonly problem?: LineProblem;
}

/** A problem found in a configuration file line; shaped like a Postgres LOG/ereport. */
export interface AuthFileError {
  readonly fileName: string;
  /** 1-based first physical line of the entry. */
  readonly line: number;
  /** 1-based column in `text` of the offending token (one past the end for "end-of-line before ..."). */
  readonly column: number;
  /** Postgres-style errmsg. */
  readonly message: string;
  readonly hint?: string;
  /** Postgres-style errcontext: `line 3 of configuration file "pg_hba.conf"`. */
  readonly context: string;
  /** The entry as written. */
  readonly text: string;
}

export type HbaError = AuthFileError;

/** Internal: what went wrong on a line, before file name and line number are attached. */
export interface LineProblem {
  readonly column: number;
  readonly message: string;
  readonly hint?: string;
}

function isBlank(c: string): boolean {
  // Postgres's pg_isblank: space, tab, CR, LF.
  return c === ' ' || c === '\t' || c === '\r' || c === '\n';
}

/**
 * Splits a configuration file into entries, the way Postgres's
 * tokenize_auth_file does: CR/LF stripped; a backslash as the very last
 * character joins the next physical line directly (PG16+, checked on the raw
 * line, so it also continues a comment); `#` outside quotes starts a comment;
 * fields are separated by whitespace; a field is a list of tokens separated
 * by unquoted commas (whitespace may follow a comma); `""` inside quotes is a
 * literal quote. Lines without fields are skipped.
 */
export function tokenizeAuthFile(text: string): AuthEntry[] {
  const physical = text.split('\n');
  const entries: AuthEntry[] = [];
  let i = 0;
  while (i < physical.length) {
    const first = i + 1;
    let joined = '';
    for (;;) {
      let raw = physical[i] ?? '';
      i++;
      if (raw.endsWith('\r')) raw = raw.slice(0, -1);
      if (raw.endsWith('\\') && i < physical.length) {
        joined += raw.slice(0, -1);
        continue;
      }
      // A backslash on the last line of the file continues into nothing.
      joined += raw.endsWith('\\') ? raw.slice(0, -1) : raw;
      break;
    }
    const { fields, problem } = tokenizeLine(joined);
    if (fields.length === 0 && problem === undefined) continue;
    entries.push(problem === undefined ? { line: first, text: joined, fields } : { line: first, text: joined, fields, problem });
  }
  return entries;
}

function tokenizeLine(text: string): { fields: AuthField[]; problem?: LineProblem } {
  const fields: AuthField[] = [];
  const n = text.length;
  let i = 0;
  let problem: LineProblem | undefined;
  while (i < n && problem === undefined) {
    const tokens: AuthToken[] = [];
    let comma = false;
    do {
      // Whitespace and commas before a token are skipped; this is what lets
      // "a, b" be one list while "a ,b" is two fields.
      while (i < n && (isBlank(text[i]!) || text[i] === ',')) i++;
      const start = i;
      let value = '';
      let inQuote = false;
      let wasQuote = false;
      let sawQuote = false;
      let initialQuote = false;
      comma = false;
      while (i < n && (inQuote || !isBlank(text[i]!))) {
        const c = text[i]!;
        if (c === '#' && !inQuote) {
          i = n;
          break;
        }
        if (c === ',' && !inQuote) {
          comma = true;
          i++;
          break;
        }
        if (c !== '"' || wasQuote) value += c;
        wasQuote = inQuote && c === '"' ? !wasQuote : false;
        if (c === '"') {
          inQuote = !inQuote;
          sawQuote = true;
          if (value.length === 0) initialQuote = true;
        }
        i++;
      }
      if (inQuote) {
        // Postgres silently ends the token at end of line; a missing quote is
        // far more likely a typo than intent, so Postern reports it.
        problem = { column: start + 1, message: 'unterminated quoted string' };
        break;
      }
      if (!sawQuote && value.length === 0) break;
      if (!initialQuote && value.length > 1 && value[0] === '@') {
        problem = {
          column: start + 1,
          message: `including names from a file ("${value}") is not supported by Postern`,
          hint: 'List the names on the line, separated by commas, or use a regular expression (/pattern).',
        };
        break;
      }
      tokens.push({ value, quoted: initialQuote, column: start + 1 });
    } while (comma);
    if (tokens.length > 0) fields.push({ tokens, column: tokens[0]!.column });
  }
  return problem === undefined ? { fields } : { fields, problem };
}

/** Postgres's token_is_keyword: keywords lose their meaning when quoted. */
function isKeyword(t: AuthToken, keyword: string): boolean {
  return !t.quoted && t.value === keyword;
}

/** Turns an entry-level problem into the reported error shape. */
export function entryError(fileName: string, entry: AuthEntry, p: LineProblem): AuthFileError {
  const base = {
    fileName,
    line: entry.line,
    column: p.column,
    message: p.message,
    context: `line ${entry.line} of configuration file "${fileName}"`,
    text: entry.text,
  };
  return p.hint === undefined ? base : { ...base, hint: p.hint };
}

/** One line for logs and CLI output: `pg_hba.conf:3:12: message (hint)`. */
export function formatAuthFileError(e: AuthFileError): string {
  return `${e.fileName}:${e.line}:${e.column}: ${e.message}${e.hint === undefined ? '' : ` (${e.hint})`}`;
}

/** Thrown inside the line parsers only; always caught by the file loop. */
class LineFailure extends PosternError {
  readonly problem: LineProblem;
  constructor(problem: LineProblem) {
    super(problem.message, 'ERR_HBA_LINE');
    this.problem = problem;
  }
}

/** Ends parsing of the current line with an error. */
export function fail(column: number, message: string, hint?: string): never {
  throw new LineFailure(hint === undefined ? { column, message } : { column, message, hint });
}

/** Runs a line parser, turning its LineFailure into a problem. */
export function tryLine<T>(parse: () => T): { ok: T } | { problem: LineProblem } {
  try {
    return { ok: parse() };
  } catch (err) {
    if (err instanceof LineFailure) return { problem: err.problem };
    throw err;
  }
}

/** Rejects an `include`, `include_if_exists` or `include_dir` line (PG16+). */
export function rejectInclude(entry: AuthEntry): void {
  const f = entry.fields[0];
  const t = f?.tokens[0];
  if (f === undefined || t === undefined || f.tokens.length !== 1 || t.quoted) return;
  if (t.value === 'include' || t.value === 'include_if_exists' || t.value === 'include_dir') {
    fail(t.column, `"${t.value}" directives are not supported by Postern`, 'Put all entries in one file.');
  }
}

// ---------------------------------------------------------------- regular expressions

/**
 * Compiles a `/pattern` name (the slash already removed). Postgres uses its
 * own POSIX ARE engine; Postern uses JavaScript's with the `u` flag. The two
 * agree on the usual anchors, classes, `\d \w \s`, groups and quantifiers; the
 * `u` flag turns most ARE-only syntax (`\m`, `(?i)` prefixes, `[[:alpha:]]`)
 * into a load-time error rather than a silently different match. Like
 * Postgres the match is unanchored: write `^...$` for a whole-name match.
 */
export function compileNameRegex(pattern: string, column: number): RegExp {
  if (/\[\[[:.=]/.test(pattern)) {
    fail(
      column,
      `invalid regular expression "${pattern}": POSIX bracket expressions are not supported by Postern`,
      'Use JavaScript classes such as \\d, \\w or \\p{L} instead of [[:digit:]], [[:alnum:]] or [[:alpha:]].',
    );
  }
  try {
    return new RegExp(pattern, 'u');
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    return fail(column, `invalid regular expression "${pattern}": ${why}`);
  }
}

/** A name field's literal value, or a `/pattern` regex (quoted or not, as in Postgres, so "/a,b" can hold a comma). */
export type NameOrRegex =
  | { readonly kind: 'name'; readonly name: string }
  | { readonly kind: 'regex'; readonly pattern: string; readonly re: RegExp };

export function nameOrRegex(t: AuthToken): NameOrRegex {
  if (!t.value.startsWith('/')) return { kind: 'name', name: t.value };
  const pattern = t.value.slice(1);
  return { kind: 'regex', pattern, re: compileNameRegex(pattern, t.column) };
}

// ---------------------------------------------------------------- rules

export const HBA_CONN_TYPES = ['local', 'host', 'hostssl', 'hostnossl', 'hostgssenc', 'hostnogssenc'] as const;
export type HbaConnType = (typeof HBA_CONN_TYPES)[number];

/**
 * Methods Postern implements. Two are Postern extensions, not Postgres
 * keywords:
 *  - `scram-sha-256-plus`: SCRAM-SHA-256 with channel binding REQUIRED
 *    (SCRAM-SHA-256-PLUS, tls-server-end-point). Postgres has no such method:
 *    it offers channel binding automatically on TLS and leaves requiring it to
 *    the client (`channel_binding=require`); this lets the gateway demand it
 *    per rule. Only valid on hostssl lines, since it cannot succeed without TLS.
 *  - `passthrough`: Postern does not authenticate; it relays the server's own
 *    authentication exchange to the client.
 */
export const HBA_METHODS = ['trust', 'reject', 'md5', 'password', 'scram-sha-256', 'scram-sha-256-plus', 'cert', 'passthrough'] as const;
export type HbaMethod = (typeof HBA_METHODS)[number];

/** Postgres methods Postern does not implement: named so the error says "not supported" rather than "invalid". */
const PG_ONLY_METHODS: ReadonlySet<string> = new Set(['gss', 'sspi', 'ident', 'peer', 'ldap', 'radius', 'pam', 'bsd', 'oauth']);

export type HbaClientCert = 'verify-ca' | 'verify-full';

export interface HbaOptions {
  readonly clientcert?: HbaClientCert;
  /** pg_ident.conf map name that certificate names are checked against. */
  readonly map?: string;
}

export type DatabaseMatcher =
  | { readonly kind: 'all' }
  | { readonly kind: 'sameuser' }
  | { readonly kind: 'replication' }
  | { readonly kind: 'name'; readonly name: string }
  | { readonly kind: 'regex'; readonly pattern: string; readonly re: RegExp };

export type UserMatcher =
  | { readonly kind: 'all' }
  | { readonly kind: 'name'; readonly name: string }
  | { readonly kind: 'regex'; readonly pattern: string; readonly re: RegExp };

export type AddressMatcher =
  | { readonly kind: 'all' }
  | {
      readonly kind: 'net';
      readonly family: 4 | 6;
      /** Address bytes already ANDed with the mask. */
      readonly network: Uint8Array;
      readonly mask: Uint8Array;
      /** As written (address, or address and mask column). */
      readonly text: string;
    };

export interface HbaRule {
  readonly fileName: string;
  readonly line: number;
  readonly connType: HbaConnType;
  /** False for `local` (Postern listens on TCP only) and `hostgssenc` (no GSSAPI encryption): kept so the file reads as written. */
  readonly canMatch: boolean;
  readonly databases: readonly DatabaseMatcher[];
  readonly users: readonly UserMatcher[];
  /** Null for `local` lines, which have no address field. */
  readonly address: AddressMatcher | null;
  readonly method: HbaMethod;
  readonly options: HbaOptions;
  /** The line as written, for logs ("connection matched line N: ..."). */
  readonly text: string;
}

export interface HbaParseResult {
  readonly rules: HbaRule[];
  readonly errors: HbaError[];
}

/** Parses pg_hba.conf text. Never throws. See the loading contract in the header. */
export function parseHba(text: string, fileName: string): HbaParseResult {
  const rules: HbaRule[] = [];
  const errors: HbaError[] = [];
  for (const entry of tokenizeAuthFile(text)) {
    if (entry.problem !== undefined) {
      errors.push(entryError(fileName, entry, entry.problem));
      continue;
    }
    const r = tryLine(() => parseHbaEntry(entry, fileName));
    if ('ok' in r) rules.push(r.ok);
    else errors.push(entryError(fileName, entry, r.problem));
  }
  return { rules, errors };
}

function single(field: AuthField, message: string, hint: string): AuthToken {
  if (field.tokens.length > 1) fail(field.tokens[1]!.column, message, hint);
  return field.tokens[0]!;
}

function parseHbaEntry(entry: AuthEntry, fileName: string): HbaRule {
  rejectInclude(entry);
  const fields = entry.fields;
  const eol = entry.text.length + 1;
  let next = 0;
  const field = (): AuthField | undefined => fields[next++];

  const typeToken = single(field()!, 'multiple values specified for connection type', 'Specify exactly one connection type per line.');
  const connType = (HBA_CONN_TYPES as readonly string[]).includes(typeToken.value) ? (typeToken.value as HbaConnType) : undefined;
  if (connType === undefined) fail(typeToken.column, `invalid connection type "${typeToken.value}"`);

  const dbField = field();
  if (dbField === undefined) fail(eol, 'end-of-line before database specification');
  const databases = dbField.tokens.map(parseDatabase);

  const userField = field();
  if (userField === undefined) fail(eol, 'end-of-line before role specification');
  const users = userField.tokens.map(parseUser);

  let address: AddressMatcher | null = null;
  if (connType !== 'local') {
    const addrField = field();
    if (addrField === undefined) fail(eol, 'end-of-line before IP address specification');
    const addrToken = single(addrField, 'multiple values specified for host address', 'Specify one address range per line.');
    address = parseAddress(addrToken, field, eol);
  }

  const methodField = field();
  if (methodField === undefined) fail(eol, 'end-of-line before authentication method');
  const methodToken = single(
    methodField,
    'multiple values specified for authentication type',
    'Specify exactly one authentication type per line.',
  );
  const method = parseMethod(methodToken, connType);

  let clientcert: HbaClientCert | undefined;
  let map: string | undefined;
  for (let f = field(); f !== undefined; f = field()) {
    for (const t of f.tokens) {
      const eq = t.value.indexOf('=');
      if (eq < 0) fail(t.column, `authentication option not in name=value format: ${t.value}`);
      const name = t.value.slice(0, eq);
      const value = t.value.slice(eq + 1);
      switch (name) {
        case 'map':
          if (method !== 'cert') fail(t.column, 'authentication option "map" is only valid for authentication method cert');
          // Postgres takes an empty map as "no map", which would quietly turn
          // a mapped rule into CN-must-equal-user; say so instead.
          if (value === '') fail(t.column, 'authentication option "map" requires a map name');
          map = value;
          break;
        case 'clientcert':
          // Postgres allows clientcert only on hostssl rows: on a `host` row
          // a plaintext connection would match without any certificate.
          if (connType !== 'hostssl') fail(t.column, 'clientcert can only be configured for "hostssl" rows');
          if (value === 'verify-full') clientcert = 'verify-full';
          else if (value === 'verify-ca') {
            if (method === 'cert') fail(t.column, 'clientcert only accepts "verify-full" when using "cert" authentication');
            clientcert = 'verify-ca';
          } else fail(t.column, `invalid value for clientcert: "${value}"`);
          break;
        case 'clientname':
          if (connType !== 'hostssl') fail(t.column, 'clientname can only be configured for "hostssl" rows');
          // CN is Postgres's default. DN would need the RFC 2253 rendering of
          // the subject exactly as OpenSSL prints it, which Node does not expose.
          if (value === 'DN')
            fail(t.column, 'clientname=DN is not supported by Postern', 'Use clientname=CN (the default), optionally with an ident map.');
          if (value !== 'CN') fail(t.column, `invalid value for clientname: "${value}"`);
          break;
        default:
          fail(t.column, `unrecognized authentication option name: "${name}"`);
      }
    }
  }
  // As in Postgres: cert authentication always verifies the full chain and the name.
  if (method === 'cert') clientcert = 'verify-full';

  const options: HbaOptions = {
    ...(clientcert === undefined ? {} : { clientcert }),
    ...(map === undefined ? {} : { map }),
  };
  return {
    fileName,
    line: entry.line,
    connType,
    canMatch: connType !== 'local' && connType !== 'hostgssenc',
    databases,
    users,
    address,
    method,
    options,
    text: entry.text,
  };
}

function parseDatabase(t: AuthToken): DatabaseMatcher {
  if (isKeyword(t, 'all')) return { kind: 'all' };
  if (isKeyword(t, 'sameuser')) return { kind: 'sameuser' };
  if (isKeyword(t, 'replication')) return { kind: 'replication' };
  if (isKeyword(t, 'samerole') || isKeyword(t, 'samegroup')) {
    fail(
      t.column,
      `${t.value} is not supported by Postern`,
      'Postern has no role membership data; list the databases or use a regular expression.',
    );
  }
  return nameOrRegex(t);
}

function parseUser(t: AuthToken): UserMatcher {
  if (isKeyword(t, 'all')) return { kind: 'all' };
  if (!t.quoted && t.value.startsWith('+')) {
    fail(
      t.column,
      `group membership ("${t.value}") is not supported by Postern`,
      'Postern has no role membership data; list the users or use a regular expression.',
    );
  }
  return nameOrRegex(t);
}

function parseMethod(t: AuthToken, connType: HbaConnType): HbaMethod {
  // Postgres compares the method text whether quoted or not.
  const v = t.value;
  if (!(HBA_METHODS as readonly string[]).includes(v)) {
    if (PG_ONLY_METHODS.has(v)) {
      fail(
        t.column,
        `authentication method "${v}" is not supported by Postern`,
        connType === 'local' ? 'Postern has no Unix-socket listener, so local lines never match; remove them.' : undefined,
      );
    }
    fail(t.column, `invalid authentication method "${v}"`);
  }
  const method = v as HbaMethod;
  if (method === 'cert' && connType !== 'hostssl') fail(t.column, 'cert authentication is only supported on hostssl connections');
  if (method === 'scram-sha-256-plus' && connType !== 'hostssl') {
    fail(t.column, 'scram-sha-256-plus authentication is only supported on hostssl connections', 'Channel binding needs TLS.');
  }
  return method;
}

// ---------------------------------------------------------------- addresses

/** Parses a numeric IPv4 or IPv6 address (no zone) into 4 or 16 bytes. */
export function parseIpBytes(s: string): Uint8Array | null {
  if (s.includes('%')) return null;
  const family = isIP(s);
  if (family === 4) return parseIPv4(s);
  if (family === 6) return parseIPv6(s);
  return null;
}

function parseIPv4(s: string): Uint8Array | null {
  const parts = s.split('.');
  if (parts.length !== 4) return null;
  const out = new Uint8Array(4);
  for (let k = 0; k < 4; k++) {
    const p = parts[k]!;
    if (!/^\d{1,3}$/.test(p)) return null;
    const v = Number(p);
    if (v > 255) return null;
    out[k] = v;
  }
  return out;
}

function parseIPv6(s: string): Uint8Array | null {
  let str = s;
  if (str.includes('.')) {
    // Embedded IPv4 tail (::ffff:1.2.3.4): rewrite it as two hex groups.
    const cut = str.lastIndexOf(':');
    const v4 = parseIPv4(str.slice(cut + 1));
    if (v4 === null) return null;
    str = `${str.slice(0, cut + 1)}${((v4[0]! << 8) | v4[1]!).toString(16)}:${((v4[2]! << 8) | v4[3]!).toString(16)}`;
  }
  const halves = str.split('::');
  if (halves.length > 2) return null;
  const head = halves[0] === '' ? [] : halves[0]!.split(':');
  const tail = halves.length === 2 && halves[1] !== '' ? halves[1]!.split(':') : [];
  const fill = 8 - head.length - tail.length;
  if (halves.length === 2 ? fill < 1 : fill !== 0) return null;
  const groups = [...head, ...new Array<string>(halves.length === 2 ? fill : 0).fill('0'), ...tail];
  const out = new Uint8Array(16);
  for (let k = 0; k < 8; k++) {
    const g = groups[k]!;
    if (!/^[0-9a-fA-F]{1,4}$/.test(g)) return null;
    const v = Number.parseInt(g, 16);
    out[2 * k] = v >> 8;
    out[2 * k + 1] = v & 0xff;
  }
  return out;
}

/**
 * A client address as Postern compares it. Node reports IPv4 clients of a
 * dual-stack listener as IPv4-mapped IPv6 (::ffff:a.b.c.d); Postgres listens
 * per family and would see them as plain IPv4, so they are unmapped here and
 * match IPv4 rules (and not IPv6 ones, as in Postgres). A zone (%eth0) is
 * dropped.
 */
export function normalizeClientAddress(address: string): { bytes: Uint8Array; display: string } | null {
  const pct = address.indexOf('%');
  const bare = pct < 0 ? address : address.slice(0, pct);
  const bytes = parseIpBytes(bare);
  if (bytes === null) return null;
  if (bytes.length === 16 && isV4Mapped(bytes)) {
    const v4 = bytes.slice(12);
    return { bytes: v4, display: v4.join('.') };
  }
  return { bytes, display: address };
}

function isV4Mapped(b: Uint8Array): boolean {
  for (let k = 0; k < 10; k++) if (b[k] !== 0) return false;
  return b[10] === 0xff && b[11] === 0xff;
}

function cidrMask(bits: number, length: number): Uint8Array {
  const mask = new Uint8Array(length);
  for (let k = 0; k < length; k++) {
    const take = Math.min(8, Math.max(0, bits - 8 * k));
    mask[k] = take === 0 ? 0 : (0xff << (8 - take)) & 0xff;
  }
  return mask;
}

function looksNumeric(s: string): boolean {
  return s.includes(':') || /^[\d.]+$/.test(s);
}

function parseAddress(t: AuthToken, nextField: () => AuthField | undefined, eol: number): AddressMatcher {
  if (isKeyword(t, 'all')) return { kind: 'all' };
  if (isKeyword(t, 'samehost') || isKeyword(t, 'samenet')) {
    fail(
      t.column,
      `"${t.value}" is not supported by Postern`,
      "Postern does not read its host's interfaces; write the addresses in CIDR notation.",
    );
  }
  const slash = t.value.indexOf('/');
  const addrText = slash < 0 ? t.value : t.value.slice(0, slash);
  const addr = parseIpBytes(addrText);
  if (addr === null) {
    if (looksNumeric(addrText)) fail(t.column, `invalid IP address "${addrText}"`);
    if (slash >= 0) fail(t.column, `specifying both host name and CIDR mask is invalid: "${t.value}"`);
    fail(
      t.column,
      `host name "${t.value}" in address field is not supported by Postern`,
      'Postern does not resolve host names for authentication; use an IP address range such as 10.0.0.0/8.',
    );
  }
  let mask: Uint8Array;
  let text = t.value;
  if (slash >= 0) {
    const bitsText = t.value.slice(slash + 1);
    const bits = Number(bitsText);
    if (!/^\d+$/.test(bitsText) || bits > addr.length * 8) fail(t.column, `invalid CIDR mask in address "${t.value}"`);
    mask = cidrMask(bits, addr.length);
  } else {
    const maskField = nextField();
    if (maskField === undefined) {
      fail(eol, 'end-of-line before netmask specification', 'Specify an address range in CIDR notation, or provide a separate netmask.');
    }
    const mt = single(maskField, 'multiple values specified for netmask', 'Specify one netmask per line.');
    const m = parseIpBytes(mt.value);
    if (m === null) {
      fail(mt.column, `invalid IP mask "${mt.value}"`, 'Specify an address range in CIDR notation, or provide a separate netmask.');
    }
    if (m.length !== addr.length) fail(mt.column, 'IP address and mask do not match');
    // Like Postgres, a non-contiguous mask is applied bit by bit rather than refused.
    mask = m;
    text = `${t.value} ${mt.value}`;
  }
  const network = addr.map((b, k) => b & mask[k]!);
  return { kind: 'net', family: addr.length === 4 ? 4 : 6, network, mask, text };
}

// ---------------------------------------------------------------- matching

export interface HbaMatchInput {
  /** The client connection is TLS-encrypted. */
  readonly ssl: boolean;
  readonly database: string;
  readonly user: string;
  /** The client's address as Node reports it (IPv4, IPv6, or IPv4-mapped IPv6). */
  readonly address: string;
  /**
   * A physical replication connection (startup parameter replication=true):
   * it matches only the `replication` keyword. Logical replication
   * (replication=database) is matched like an ordinary connection: pass false.
   */
  readonly replication?: boolean;
}

/** The first rule that matches, or null. Later lines never override an earlier match. */
export function matchHba(rules: readonly HbaRule[], input: HbaMatchInput): HbaRule | null {
  const client = normalizeClientAddress(input.address);
  for (const rule of rules) {
    if (ruleMatches(rule, input, client?.bytes ?? null)) return rule;
  }
  return null;
}

function ruleMatches(rule: HbaRule, input: HbaMatchInput, client: Uint8Array | null): boolean {
  switch (rule.connType) {
    case 'local':
    case 'hostgssenc':
      return false;
    case 'host':
    case 'hostnogssenc':
      break;
    case 'hostssl':
      if (!input.ssl) return false;
      break;
    case 'hostnossl':
      if (input.ssl) return false;
      break;
    default:
      rule.connType satisfies never;
      return false;
  }
  if (rule.address === null || !addressMatches(rule.address, client)) return false;
  return databaseMatches(rule.databases, input) && userMatches(rule.users, input.user);
}

function addressMatches(a: AddressMatcher, client: Uint8Array | null): boolean {
  if (a.kind === 'all') return true;
  if (client === null || client.length !== a.network.length) return false;
  for (let k = 0; k < client.length; k++) {
    if ((client[k]! & a.mask[k]!) !== a.network[k]) return false;
  }
  return true;
}

function databaseMatches(list: readonly DatabaseMatcher[], input: HbaMatchInput): boolean {
  const replication = input.replication === true;
  for (const m of list) {
    // Physical replication has no database: only the keyword can admit it,
    // and `all` does not (Postgres's check_db).
    if (replication) {
      if (m.kind === 'replication') return true;
      continue;
    }
    switch (m.kind) {
      case 'all':
        return true;
      case 'sameuser':
        if (input.database === input.user) return true;
        break;
      case 'replication':
        break;
      case 'regex':
        if (m.re.test(input.database)) return true;
        break;
      case 'name':
        if (m.name === input.database) return true;
        break;
      default:
        m satisfies never;
    }
  }
  return false;
}

function userMatches(list: readonly UserMatcher[], user: string): boolean {
  for (const m of list) {
    switch (m.kind) {
      case 'all':
        return true;
      case 'regex':
        if (m.re.test(user)) return true;
        break;
      case 'name':
        if (m.name === user) return true;
        break;
      default:
        m satisfies never;
    }
  }
  return false;
}

// ---------------------------------------------------------------- messages

function hostForMessage(address: string): string {
  return normalizeClientAddress(address)?.display ?? address;
}

function encryptionState(input: HbaMatchInput): string {
  // Postern never offers GSS encryption, so "GSS encryption" cannot occur.
  return input.ssl ? 'SSL encryption' : 'no encryption';
}

/**
 * The FATAL (SQLSTATE 28000, invalid_authorization_specification) message
 * Postgres 14+ sends when no line matches (auth.c, uaImplicitReject).
 */
export function noMatchMessage(input: HbaMatchInput): string {
  const host = hostForMessage(input.address);
  if (input.replication === true) {
    return `no pg_hba.conf entry for replication connection from host "${host}", user "${input.user}", ${encryptionState(input)}`;
  }
  return `no pg_hba.conf entry for host "${host}", user "${input.user}", database "${input.database}", ${encryptionState(input)}`;
}

/** The FATAL (SQLSTATE 28000) message Postgres 14+ sends when the matching line says `reject` (auth.c, uaReject). */
export function rejectMessage(input: HbaMatchInput): string {
  const host = hostForMessage(input.address);
  if (input.replication === true) {
    return `pg_hba.conf rejects replication connection for host "${host}", user "${input.user}", ${encryptionState(input)}`;
  }
  return `pg_hba.conf rejects connection for host "${host}", user "${input.user}", database "${input.database}", ${encryptionState(input)}`;
}
