// Reads a YAML config file, validates it against the settings table, applies
// defaults, resolves relative paths against the file's folder, and runs the
// cross-field checks a single row cannot express. Every problem is reported,
// each with its key path, so `postern check` can list them all at once.

import { accessSync, constants, readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { type Config, configSchema, SETTINGS } from './schema.ts';

export interface ConfigProblem {
  path: string;
  message: string;
}

export type LoadResult = { ok: true; config: Config } | { ok: false; problems: ConfigProblem[] };

export class ConfigError extends Error {
  readonly problems: ConfigProblem[];
  constructor(problems: ConfigProblem[]) {
    super(`invalid configuration:\n${problems.map((p) => `  ${p.path || '(root)'}: ${p.message}`).join('\n')}`);
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

const PATH_KEYS = SETTINGS.filter((s) => s.kind === 'path').map((s) => s.key.split('.'));

/** Validates an already-parsed object. `baseDir` anchors relative paths. */
export function validateConfig(raw: unknown, baseDir: string): LoadResult {
  const parsed = configSchema.safeParse(raw ?? {});
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => ({
      path: i.path.map(String).join('.'),
      message: i.code === 'unrecognized_keys' ? `unknown setting(s): ${i.keys.join(', ')}` : i.message,
    }));
    return { ok: false, problems };
  }
  const config = parsed.data as Config;
  for (const keyPath of PATH_KEYS) resolvePaths(config as unknown as Record<string, unknown>, keyPath, baseDir);
  const problems = crossCheck(config);
  return problems.length > 0 ? { ok: false, problems } : { ok: true, config };
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
      if (typeof v === 'string' && !isAbsolute(v)) obj[k] = resolve(baseDir, v);
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

function crossCheck(c: Config): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
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
  readable(t.cert, 'tls.cert', problems);
  readable(t.key, 'tls.key', problems);
  readable(t.ca, 'tls.ca', problems);
  if (Object.keys(c.databases).length === 0) {
    problems.push({ path: 'databases', message: 'at least one database must be configured' });
  }
  for (const [name, db] of Object.entries(c.databases)) {
    const p = `databases.${name}.tls`;
    if ((db.tls.cert === undefined) !== (db.tls.key === undefined)) {
      problems.push({ path: `${p}.cert`, message: 'cert and key must be given together' });
    }
    if ((db.tls.mode === 'verify-ca' || db.tls.mode === 'verify-full') && db.tls.ca === undefined) {
      problems.push({ path: `${p}.ca`, message: `mode ${db.tls.mode} needs a ca` });
    }
    readable(db.tls.ca, `${p}.ca`, problems);
    readable(db.tls.cert, `${p}.cert`, problems);
    readable(db.tls.key, `${p}.key`, problems);
  }
  return problems;
}
