// Reads a YAML config file, validates it against the settings table, applies
// defaults, resolves relative paths against the file's folder, and runs the
// cross-field checks a single row cannot express. Every problem is reported,
// each with its key path, so `postern check` can list them all at once.

import { accessSync, constants, readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, isAbsolute, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { PosternError } from '../errors.ts';
import { type Config, configSchema, SETTINGS } from './schema.ts';

export interface ConfigProblem {
  path: string;
  message: string;
}

export type LoadResult = { ok: true; config: Config } | { ok: false; problems: ConfigProblem[] };

export class ConfigError extends PosternError {
  readonly problems: ConfigProblem[];
  constructor(problems: ConfigProblem[]) {
    super(`invalid configuration:\n${problems.map((p) => `  ${p.path || '(root)'}: ${p.message}`).join('\n')}`, 'ERR_CONFIG');
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

/** Virtual database names of the admin console. */
export const ADMIN_DATABASES: ReadonlySet<string> = new Set(['postern', 'pgbouncer']);

const PATH_KEYS = SETTINGS.filter((s) => s.kind === 'path').map((s) => s.key.split('.'));

/** Validates an already-parsed object. `baseDir` anchors relative paths. */
export function validateConfig(raw: unknown, baseDir: string): LoadResult {
  const parsed = configSchema.safeParse(raw ?? {});
  if (!parsed.success) {
    // One problem per unknown key, named by its own key path (zod reports them
    // once, at the parent object, which is '' for a top-level typo).
    const broken: PropertyKey[][] = [];
    const problems: ConfigProblem[] = [];
    for (const i of parsed.error.issues) {
      if (i.code === 'unrecognized_keys') {
        for (const k of i.keys) {
          broken.push([...i.path, k]);
          problems.push({ path: [...i.path, k].map(String).join('.'), message: 'unknown setting' });
        }
      } else {
        broken.push(i.path);
        problems.push({ path: i.path.map(String).join('.'), message: i.message });
      }
    }
    // The cross-field checks still run, on the input minus its broken entries
    // (their defaults apply), so one `postern check` lists every problem.
    const trimmed = withoutPaths(raw ?? {}, broken);
    const rest = trimmed === undefined ? undefined : configSchema.safeParse(trimmed);
    // A cross-field problem at, above or below a reported path only echoes it.
    if (rest?.success) {
      const seen = problems.map((p) => p.path);
      const echoes = (q: string) => seen.some((p) => p === q || q.startsWith(`${p}.`) || p.startsWith(`${q}.`));
      for (const p of checkParsed(rest.data as Config, baseDir)) if (!echoes(p.path)) problems.push(p);
    }
    return { ok: false, problems };
  }
  const config = parsed.data as Config;
  const problems = checkParsed(config, baseDir);
  return problems.length > 0 ? { ok: false, problems } : { ok: true, config };
}

function checkParsed(config: Config, baseDir: string): ConfigProblem[] {
  for (const keyPath of PATH_KEYS) resolvePaths(config as unknown as Record<string, unknown>, keyPath, baseDir);
  // Paths inside lists: the certificate entries.
  const lists = [config.tls.certificates, ...Object.values(config.tenants).map((t) => t.certificates)];
  for (const list of lists)
    for (const e of list) {
      if (!isAbsolute(e.cert)) e.cert = resolve(baseDir, e.cert);
      if (!isAbsolute(e.key)) e.key = resolve(baseDir, e.key);
    }
  return crossCheck(config);
}

/** A copy of raw without the entries at `paths`; undefined when the root itself is broken. */
function withoutPaths(raw: unknown, paths: PropertyKey[][]): unknown {
  if (paths.some((p) => p.length === 0)) return undefined;
  let copy: unknown;
  try {
    copy = structuredClone(raw);
  } catch {
    return undefined;
  }
  for (const p of paths) {
    let obj = copy as Record<PropertyKey, unknown> | null;
    for (let i = 0; i < p.length - 1 && obj !== null && typeof obj === 'object'; i++) {
      obj = obj[p[i] as PropertyKey] as Record<PropertyKey, unknown> | null;
    }
    if (obj !== null && typeof obj === 'object') delete obj[p[p.length - 1] as PropertyKey];
  }
  return copy;
}

export function loadConfigFile(file: string): LoadResult {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    return { ok: false, problems: [{ path: '', message: `cannot read ${file}: ${(e as Error).message}` }] };
  }
  let raw: unknown;
  try {
    raw = parseYaml(text);
  } catch (e) {
    return { ok: false, problems: [{ path: '', message: `${file} is not valid YAML: ${(e as Error).message}` }] };
  }
  return validateConfig(raw, dirname(resolve(file)));
}

function resolvePaths(obj: Record<string, unknown>, keyPath: string[], baseDir: string): void {
  const [head, ...rest] = keyPath;
  if (head === undefined || obj === null || typeof obj !== 'object') return;
  const targets = head === '*' ? Object.keys(obj) : [head];
  for (const k of targets) {
    if (rest.length === 0) {
      const v = obj[k];
      // 'stdout' names a stream, not a file (audit.file).
      if (typeof v === 'string' && !isAbsolute(v) && v !== 'stdout') obj[k] = resolve(baseDir, v);
    } else {
      const child = obj[k];
      if (child && typeof child === 'object') resolvePaths(child as Record<string, unknown>, rest, baseDir);
    }
  }
}

function readable(file: string | undefined, path: string, problems: ConfigProblem[]): void {
  if (file === undefined) return;
  try {
    accessSync(file, constants.R_OK);
  } catch {
    problems.push({ path, message: `file ${file} is not readable` });
  }
}

/** The number of worker processes `workers` asks for. */
export function workerCount(c: Pick<Config, 'workers'>): number {
  return c.workers === 'auto' ? Math.max(1, availableParallelism()) : c.workers;
}

function crossCheck(c: Config): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  const n = workerCount(c);
  if (n > 1) {
    // Split limits: every worker needs a share of at least one.
    const atLeast = (path: string, v: number | undefined, zeroOk = false): void => {
      if (v === undefined || (zeroOk && v === 0) || v >= n) return;
      problems.push({ path, message: `${v} is less than workers (${n}): the limit is split over the workers and each needs at least 1` });
    };
    atLeast('pool.default_pool_size', c.pool.default_pool_size);
    atLeast('pool.max_client_conn', c.pool.max_client_conn);
    atLeast('pool.max_db_connections', c.pool.max_db_connections, true);
    atLeast('pool.max_user_connections', c.pool.max_user_connections, true);
    for (const [name, db] of Object.entries(c.databases)) atLeast(`databases.${name}.pool_size`, db.pool_size);
  }
  const t = c.tls;
  if ((t.cert === undefined) !== (t.key === undefined)) {
    problems.push({ path: t.cert === undefined ? 'tls.cert' : 'tls.key', message: 'tls.cert and tls.key must be given together' });
  }
  if (t.mode !== 'disable' && t.mode !== 'allow' && t.cert === undefined) {
    problems.push({ path: 'tls.mode', message: `mode ${t.mode} needs tls.cert and tls.key` });
  }
  if ((t.mode === 'verify-ca' || t.mode === 'verify-full') && t.ca === undefined) {
    problems.push({ path: 'tls.ca', message: `mode ${t.mode} needs tls.ca to check client certificates` });
  }
  const at = c.admin.tls;
  if ((at?.cert === undefined) !== (at?.key === undefined)) {
    // One without the other would silently serve plain HTTP.
    problems.push({
      path: at?.cert === undefined ? 'admin.tls.cert' : 'admin.tls.key',
      message: 'admin.tls.cert and admin.tls.key must be given together',
    });
  }
  readable(at?.cert, 'admin.tls.cert', problems);
  readable(at?.key, 'admin.tls.key', problems);
  readable(t.cert, 'tls.cert', problems);
  readable(t.key, 'tls.key', problems);
  readable(t.ca, 'tls.ca', problems);
  if (c.auth.query_database !== undefined && c.databases[c.auth.query_database] === undefined) {
    problems.push({ path: 'auth.query_database', message: `"${c.auth.query_database}" is not a key of databases` });
  }
  readable(c.auth.hba_file, 'auth.hba_file', problems);
  readable(c.auth.ident_file, 'auth.ident_file', problems);
  readable(c.auth.users_file, 'auth.users_file', problems);
  const cl = c.cluster;
  if (cl.secret_file !== undefined) {
    // The file's content becomes cluster.secret (so the rest reads one setting, and it is redacted like one).
    if (cl.secret !== undefined)
      problems.push({ path: 'cluster.secret_file', message: 'set cluster.secret or cluster.secret_file, not both' });
    else {
      try {
        cl.secret = readFileSync(cl.secret_file, 'utf8').trim();
      } catch {
        problems.push({ path: 'cluster.secret_file', message: `file ${cl.secret_file} is not readable` });
      }
    }
  }
  if (cl.peers.length > 0 || cl.peers_dns !== undefined) {
    if (cl.secret === undefined || cl.secret.length < 16) {
      problems.push({
        path: 'cluster.secret',
        message: 'cluster.peers and cluster.peers_dns need a cluster.secret of at least 16 characters',
      });
    }
  }
  if (cl.peers.length > 0 && cl.instance_id === undefined) {
    problems.push({ path: 'cluster.instance_id', message: "cluster.peers needs this instance's cluster.instance_id" });
  }
  const ids = new Set<number>();
  for (const [i, p] of cl.peers.entries()) {
    if (ids.has(p.id)) problems.push({ path: `cluster.peers.${i}.id`, message: `instance ${p.id} is listed twice` });
    ids.add(p.id);
  }
  const tenants = Object.entries(c.tenants);
  if (Object.keys(c.databases).length === 0 && tenants.length === 0) {
    problems.push({ path: 'databases', message: 'at least one database must be configured' });
  }
  checkDatabases('databases', c.databases, problems);
  checkCertificates('tls.certificates', c.tls.certificates, problems);
  const owner = new Map<string, string>();
  for (const [name, t] of tenants) {
    const p = `tenants.${name}`;
    if (!TENANT_NAME.test(name)) problems.push({ path: p, message: 'a tenant name is letters, digits, _, . and - only' });
    if (t.server_names === undefined || t.server_names.length === 0)
      problems.push({ path: `${p}.server_names`, message: 'a tenant needs at least one server name' });
    for (const n of t.server_names ?? []) {
      const other = owner.get(n);
      if (other !== undefined) problems.push({ path: `${p}.server_names`, message: `"${n}" is also a server name of tenant "${other}"` });
      else owner.set(n, name);
    }
    checkCertificates(`${p}.certificates`, t.certificates, problems);
    if (t.passthrough.host !== undefined) {
      if (Object.keys(t.databases).length > 0)
        problems.push({ path: `${p}.databases`, message: 'a passthrough tenant is spliced to its server: it has no databases' });
      if (t.certificates.length > 0)
        problems.push({
          path: `${p}.certificates`,
          message: "a passthrough tenant presents its server's certificate, not one of Postern's",
        });
    } else {
      if (Object.keys(t.databases).length === 0)
        problems.push({ path: `${p}.databases`, message: 'a tenant needs databases or passthrough' });
      if (c.tls.cert === undefined && t.certificates.length === 0)
        problems.push({
          path: `${p}.certificates`,
          message: 'a tenant Postern terminates TLS for needs a certificate (tls.cert or certificates)',
        });
    }
    checkDatabases(`${p}.databases`, t.databases, problems);
  }
  if (tenants.length > 0 && t.mode === 'disable')
    problems.push({ path: 'tls.mode', message: 'tenants are chosen by TLS server name: TLS cannot be disabled' });
  return problems;
}

const TENANT_NAME = /^[A-Za-z0-9_.-]+$/;

function checkCertificates(path: string, list: Config['tls']['certificates'], problems: ConfigProblem[]): void {
  list.forEach((e, i) => {
    readable(e.cert, `${path}.${i}.cert`, problems);
    readable(e.key, `${path}.${i}.key`, problems);
  });
}

function checkDatabases(prefix: string, dbs: Config['databases'], problems: ConfigProblem[]): void {
  for (const [name, db] of Object.entries(dbs)) {
    if (ADMIN_DATABASES.has(name)) {
      problems.push({ path: `${prefix}.${name}`, message: `"${name}" is reserved for the admin console` });
    }
    const p = `${prefix}.${name}.tls`;
    if ((db.tls.cert === undefined) !== (db.tls.key === undefined)) {
      problems.push({ path: `${p}.cert`, message: 'cert and key must be given together' });
    }
    if ((db.tls.mode === 'verify-ca' || db.tls.mode === 'verify-full') && db.tls.ca === undefined) {
      problems.push({ path: `${p}.ca`, message: `mode ${db.tls.mode} needs a ca` });
    }
    if (db.tls.direct && (db.tls.mode === 'disable' || db.tls.mode === 'prefer')) {
      problems.push({ path: `${p}.direct`, message: `direct TLS needs tls.mode require, verify-ca or verify-full (not ${db.tls.mode})` });
    }
    readable(db.tls.ca, `${p}.ca`, problems);
    readable(db.tls.cert, `${p}.cert`, problems);
    readable(db.tls.key, `${p}.key`, problems);
  }
}

/** The value at a setting's key path (`a.b.c` split), undefined where the path ends early. */
export function getPath(obj: unknown, parts: string[]): unknown {
  let o = obj;
  for (const k of parts) o = o !== null && typeof o === 'object' ? (o as Record<string, unknown>)[k] : undefined;
  return o;
}

function setPath(obj: Record<string, unknown>, parts: string[], v: unknown): void {
  let o = obj;
  for (const k of parts.slice(0, -1)) {
    if (o[k] === null || typeof o[k] !== 'object') o[k] = {};
    o = o[k] as Record<string, unknown>;
  }
  const last = parts[parts.length - 1] as string;
  if (v === undefined) delete o[last];
  else o[last] = v;
}

/**
 * A reload's config with every setting that needs a restart put back to its
 * running value, and the keys of those whose file value differs (they take
 * effect at the next start). Reloadable settings come from `loaded`.
 */
export function keepRestartSettings(running: Config, loaded: Config): { config: Config; unapplied: string[] } {
  const config = structuredClone(loaded);
  const unapplied: string[] = [];
  for (const s of SETTINGS) {
    if (s.reloadable || s.docOnly || s.mirror || s.key.includes('*')) continue;
    const parts = s.key.split('.');
    const was = getPath(running, parts);
    if (JSON.stringify(was) === JSON.stringify(getPath(loaded, parts))) continue;
    unapplied.push(s.key);
    setPath(config as unknown as Record<string, unknown>, parts, was);
  }
  // HTTPS on or off decides what the admin listener is: its files reload, turning it on or off needs a restart.
  if ((running.admin.tls.cert === undefined) !== (loaded.admin.tls.cert === undefined)) {
    config.admin.tls = structuredClone(running.admin.tls);
    unapplied.push('admin.tls');
  }
  return { config, unapplied };
}
