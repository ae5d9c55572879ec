// Session settings carried across pooled server connections: what one
// client's session should have (ClientSettings), what differs on a given
// server connection (settingsDiff), and the messages that change it.
//
// Rules (docs/transaction-mode.md):
//   - GUC names are case-insensitive: every setting is keyed by its lower-case
//     name (libpq sends `datestyle`, the server reports `DateStyle`).
//   - Values are never spliced into SQL text. Postern sets them with
//     `set_config($1, $2, false)` through the extended protocol, the name and
//     the value as parameters, so no value (or standard_conforming_strings
//     setting) can turn into SQL; a NULL value is RESET. Each setting is its
//     own Sync-delimited batch, so one refused value cannot void the others.
//   - Reported settings (the ones the server sends ParameterStatus for) are
//     known from those messages; other settings from what Postern set and
//     from reading back `current_setting` after a client's SET committed.
//
// https://www.postgresql.org/docs/current/functions-admin.html#FUNCTIONS-ADMIN-SET

import { encodeBind, encodeExecute, encodeParse, SYNC } from '../protocol/frontend.ts';
import type { ServerConn } from './server-conn.ts';

/** Reported settings no client can set (read-only, or changed only by features that pin). */
export const READ_ONLY_REPORTED: ReadonlySet<string> = new Set([
  'server_version',
  'server_version_num',
  'server_encoding',
  'integer_datetimes',
  'is_superuser',
  'session_authorization',
  'in_hot_standby',
]);

/** A GUC name as PostgreSQL accepts it: identifiers, dot-separated for custom (extension) settings. */
export const GUC_NAME = /^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)*$/;

/** The key of a setting: GUC names are case-insensitive (ASCII folding, as PostgreSQL's guc_name_compare). */
export function gucKey(name: string): string {
  return name.replace(/[A-Z]/g, (c) => c.toLowerCase());
}

/** Settings one client's session should have, on whichever server it lands. */
export class ClientSettings {
  /** Reported, settable settings: lower-case name -> value (the server's spelling once a server confirmed it). */
  readonly reported = new Map<string, string>();
  /** Other settings the client changed (startup or SET): lower-case name -> value. */
  readonly custom = new Map<string, string>();
  /** Bumped at every change, so a connection that already has this version needs no comparison. */
  version = 0;
  #key = '';
  #keyVersion = -1;

  /** The settings' content as one string (equal for two clients that want the same): a connection that has it needs no comparison. */
  get key(): string {
    if (this.#keyVersion !== this.version) {
      this.#keyVersion = this.version;
      const parts: string[] = [];
      for (const [k, v] of this.reported) parts.push(`r${k}\u0000${v}`);
      for (const [k, v] of this.custom) parts.push(`c${k}\u0000${v}`);
      this.#key = parts.sort().join('\u0001');
    }
    return this.#key;
  }

  /** Sets a value; `isReported` says which map it belongs to. */
  set(key: string, value: string, isReported: boolean): void {
    const m = isReported ? this.reported : this.custom;
    if (m.get(key) === value) return;
    m.set(key, value);
    this.version++;
  }

  /** An unreported setting is back to its default. */
  unset(key: string): void {
    if (this.custom.delete(key)) this.version++;
  }
}

/** What to do on a connection: [name, value] sets, [name, null] resets to the session default. */
export type SettingChange = readonly [string, string | null];
const NONE: readonly SettingChange[] = Object.freeze([]);

/**
 * The changes that give `conn`'s session exactly `want`: reported settings
 * that differ, custom ones that differ or are unknown, and custom ones an
 * earlier client left that this client does not have (reset). client_encoding
 * comes last, after UTF8 when values that are not ASCII are sent while the
 * connection uses another encoding (parameters are sent as UTF-8).
 */
export function settingsDiff(want: ClientSettings, conn: ServerConn): readonly SettingChange[] {
  if (conn.settingsOf === want && conn.settingsVersion === want.version) return NONE;
  if (conn.settingsKey !== null && conn.settingsKey === want.key) return NONE;
  const out: SettingChange[] = [];
  let encoding: string | null = null;
  let nonAscii = false;
  for (const [k, v] of want.reported) {
    if (conn.params.get(k) === v) continue;
    if (k === 'client_encoding') {
      encoding = v;
      continue;
    }
    out.push([k, v]);
    nonAscii ||= !isAscii(v);
  }
  for (const [k, v] of want.custom) {
    if (conn.custom.get(k) === v) continue;
    out.push([k, v]);
    nonAscii ||= !isAscii(v);
  }
  for (const k of conn.custom.keys()) if (!want.custom.has(k)) out.push([k, null]);
  if (out.length === 0 && encoding === null) return NONE;
  const current = conn.params.get('client_encoding') ?? 'UTF8';
  if (nonAscii && gucKey(current) !== 'utf8') out.unshift(['client_encoding', 'UTF8']);
  if (encoding !== null) out.push(['client_encoding', encoding]);
  else if (nonAscii && gucKey(current) !== 'utf8') out.push(['client_encoding', current]);
  return out;
}

function isAscii(s: string): boolean {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) > 0x7e) return false;
  return true;
}

/** Parse of the statement that sets (or, with a NULL value, resets) one setting. */
export const SET_CONFIG_PARSE: Buffer = encodeParse('', 'select pg_catalog.set_config($1, $2, false)');
/** Parse of the statement that reads one setting back (NULL when it does not exist). */
export const READ_SETTING_PARSE: Buffer = encodeParse('', 'select pg_catalog.current_setting($1, true)');
/**
 * Parse of the statement that lists every setting the session itself changed
 * (source 'session': SET, set_config, also from procedural code Postern cannot
 * read), lower-case name and value. Placeholders (dotted names) are not listed.
 */
export const SESSION_SETTINGS_PARSE: Buffer = encodeParse(
  '',
  "select pg_catalog.lower(name), pg_catalog.current_setting(name) from pg_catalog.pg_settings where source = 'session'",
);
export const EXECUTE_UNNAMED: Buffer = encodeExecute('', 0);
export { SYNC };

/** Bind of the unnamed statement with the given text parameters. */
export function bindParams(...params: (string | null)[]): Buffer {
  return encodeBind('', '', params);
}

/**
 * Decodes the first column of a DataRow (text format) at buf[start, end);
 * null for SQL NULL or a malformed row. `latin1` when the connection's
 * client_encoding is not UTF8 (the bytes are then kept one to one).
 */
export function firstColumn(buf: Buffer, start: number, end: number, latin1: boolean): string | null {
  if (end - start < 11) return null;
  const n = buf.readInt16BE(start + 5);
  if (n < 1) return null;
  const len = buf.readInt32BE(start + 7);
  if (len < 0 || start + 11 + len > end) return null;
  return buf.toString(latin1 ? 'latin1' : 'utf8', start + 11, start + 11 + len);
}

/** Decodes the first two columns of a DataRow (text format); null for a malformed row or a NULL. */
export function twoColumns(buf: Buffer, start: number, end: number, latin1: boolean): [string, string] | null {
  if (end - start < 15 || buf.readInt16BE(start + 5) < 2) return null;
  const enc = latin1 ? 'latin1' : 'utf8';
  let at = start + 7;
  const out: string[] = [];
  for (let i = 0; i < 2; i++) {
    if (at + 4 > end) return null;
    const len = buf.readInt32BE(at);
    at += 4;
    if (len < 0 || at + len > end) return null;
    out.push(buf.toString(enc, at, at + len));
    at += len;
  }
  return [out[0] as string, out[1] as string];
}

/** Startup parameters that are not settings (the rest are, as PostgreSQL treats them). */
export const NOT_SETTINGS: ReadonlySet<string> = new Set(['user', 'database', 'replication', 'options']);

/** `-c name=value` / `--name=value` pairs of a startup `options` string (backslash escapes a space). */
export function parseOptions(options: string): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  const words = options.match(/(?:\\.|\S)+/g) ?? [];
  for (let i = 0; i < words.length; i++) {
    let w = (words[i] as string).replace(/\\(.)/g, '$1');
    if (w === '-c') w = (words[++i] ?? '').replace(/\\(.)/g, '$1');
    else if (w.startsWith('-c')) w = w.slice(2);
    else if (w.startsWith('--')) w = w.slice(2);
    else continue;
    const eq = w.indexOf('=');
    if (eq > 0) out.push([w.slice(0, eq).replace(/-/g, '_'), w.slice(eq + 1)]);
  }
  return out;
}

/** At most this many settings in a startup packet (PostgreSQL has no count limit but its 10,000-byte packet). */
export const MAX_STARTUP_SETTINGS = 64;

/** A startup problem answered with a FATAL, as the server would. */
export interface StartupRefusal {
  code: string;
  message: string;
}

/**
 * The settings a startup packet asks for, by lower-case name, in the order
 * given (a later duplicate wins, as in PostgreSQL). Refuses names PostgreSQL
 * could not accept, and more than MAX_STARTUP_SETTINGS of them.
 */
export function startupSettings(params: ReadonlyMap<string, string>): Map<string, string> | StartupRefusal {
  const out = new Map<string, string>();
  const add = (name: string, value: string): StartupRefusal | null => {
    if (!GUC_NAME.test(name)) return { code: '42704', message: `unrecognized configuration parameter "${name}"` };
    const key = gucKey(name);
    out.delete(key);
    out.set(key, value);
    if (out.size > MAX_STARTUP_SETTINGS)
      return { code: '53400', message: `too many settings in the startup packet (Postern accepts ${MAX_STARTUP_SETTINGS})` };
    return null;
  };
  for (const [k, v] of params) {
    if (NOT_SETTINGS.has(k) || k.startsWith('_pq_.')) continue;
    const bad = add(k, v);
    if (bad !== null) return bad;
  }
  for (const [k, v] of parseOptions(params.get('options') ?? '')) {
    const bad = add(k, v);
    if (bad !== null) return bad;
  }
  return out;
}

/** The key under which a pool remembers that a set of startup settings was checked (application_name excluded: any value is valid). */
export function validationKey(settings: ReadonlyMap<string, string>): string {
  const parts: string[] = [];
  for (const [k, v] of settings) if (k !== 'application_name') parts.push(`${k}\u0000${v}`);
  return parts.sort().join('\u0001');
}
