// Helpers for the deployment tests (test/unit/deploy.test.ts and
// test/integration/deploy.test.ts): read the Kubernetes manifests, parse the
// Dockerfile and .dockerignore, lay out the pod's config volume on disk, and
// pull metric names and labels out of PromQL. No Docker engine or cluster is
// involved: these read the files the way Docker and the kubelet would.

import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { parseAllDocuments } from 'yaml';

export const K8S_DIR = 'deploy/kubernetes';
export const DASHBOARD = 'deploy/grafana/postern.json';

// ---------------------------------------------------------------- manifests

// biome-ignore lint/suspicious/noExplicitAny: manifests are plain parsed YAML, checked by the tests
export type Obj = Record<string, any>;

export interface Manifest {
  file: string;
  index: number;
  obj: Obj;
}

/** Every .yaml/.yml file under dir, recursively, sorted. */
export function yamlFiles(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...yamlFiles(p));
    else if (/\.ya?ml$/.test(name)) out.push(p);
  }
  return out;
}

/** Every YAML document under deploy/kubernetes; throws on the first parse error or warning. */
export function loadManifests(dir = K8S_DIR): Manifest[] {
  const out: Manifest[] = [];
  for (const file of yamlFiles(dir)) {
    parseAllDocuments(readFileSync(file, 'utf8')).forEach((doc, index) => {
      if ('empty' in doc) return;
      const problems = [...doc.errors, ...doc.warnings];
      if (problems.length > 0) throw new Error(`${file} document ${index}: ${problems.map((e) => e.message).join('; ')}`);
      const obj = doc.toJS() as Obj | null;
      if (obj === null) throw new Error(`${file} document ${index} is empty`);
      out.push({ file, index, obj });
    });
  }
  return out;
}

export function byKind(ms: Manifest[], kind: string): Obj[] {
  return ms.filter((m) => m.obj.kind === kind).map((m) => m.obj);
}

export function named(ms: Manifest[], kind: string, name: string): Obj {
  const o = byKind(ms, kind).find((x) => x.metadata?.name === name);
  if (o === undefined) throw new Error(`no ${kind} named ${name} in ${K8S_DIR}`);
  return o;
}

/** The one Postern container of the one Deployment. */
export function posternContainer(ms: Manifest[]): { deployment: Obj; container: Obj } {
  const ds = byKind(ms, 'Deployment');
  if (ds.length !== 1) throw new Error(`expected one Deployment, found ${ds.length}`);
  const deployment = ds[0] as Obj;
  const container = (deployment.spec.template.spec.containers as Obj[]).find((c) => c.name === 'postern');
  if (container === undefined) throw new Error('the Deployment has no container named postern');
  return { deployment, container };
}

/** The value of a container port: a number, or the containerPort of the port with that name. */
export function containerPort(container: Obj, port: number | string): number {
  if (typeof port === 'number') return port;
  const p = (container.ports as Obj[]).find((x) => x.name === port);
  if (p === undefined) throw new Error(`container has no port named ${port}`);
  return p.containerPort as number;
}

// ---------------------------------------------------------------- the config volume

export interface VolumeFile {
  /** Path inside the container, e.g. /etc/postern/tls/tls.key. */
  path: string;
  content: string;
  mode: number;
}

/**
 * The files the kubelet would put into the container for `volumeMount`: one
 * per item of the volume's configMap/secret sources (or every key when a
 * source has no items), with the ConfigMap's data or the Secret's
 * stringData/data, and the volume's defaultMode (or an item's own mode).
 */
export function volumeFiles(ms: Manifest[], deployment: Obj, volumeMount: Obj): VolumeFile[] {
  const volume = (deployment.spec.template.spec.volumes as Obj[]).find((v) => v.name === volumeMount.name);
  if (volume === undefined) throw new Error(`no volume named ${volumeMount.name}`);
  const sources: Array<{ kind: string; ref: Obj; defaultMode: number }> = [];
  if (volume.projected) {
    for (const s of volume.projected.sources as Obj[]) {
      if (s.configMap) sources.push({ kind: 'ConfigMap', ref: s.configMap, defaultMode: volume.projected.defaultMode ?? 0o644 });
      else if (s.secret) sources.push({ kind: 'Secret', ref: s.secret, defaultMode: volume.projected.defaultMode ?? 0o644 });
      else throw new Error(`unsupported projected source ${Object.keys(s).join(',')}`);
    }
  } else if (volume.configMap) {
    sources.push({
      kind: 'ConfigMap',
      ref: { ...volume.configMap, name: volume.configMap.name },
      defaultMode: volume.configMap.defaultMode ?? 0o644,
    });
  } else if (volume.secret) {
    sources.push({
      kind: 'Secret',
      ref: { ...volume.secret, name: volume.secret.secretName },
      defaultMode: volume.secret.defaultMode ?? 0o644,
    });
  } else {
    throw new Error(`volume ${volume.name} is neither a ConfigMap, a Secret nor projected`);
  }
  const out: VolumeFile[] = [];
  for (const { kind, ref, defaultMode } of sources) {
    const data = sourceData(named(ms, kind, ref.name as string));
    const items: Obj[] = ref.items ?? Object.keys(data).map((key) => ({ key, path: key }));
    for (const item of items) {
      const content = data[item.key as string];
      if (content === undefined) throw new Error(`${kind} ${ref.name} has no key ${item.key}`);
      out.push({ path: join(volumeMount.mountPath as string, item.path as string), content, mode: item.mode ?? defaultMode });
    }
  }
  return out;
}

/** A ConfigMap's data, or a Secret's stringData over its base64-decoded data. */
export function sourceData(o: Obj): Record<string, string> {
  if (o.kind === 'ConfigMap') return { ...(o.data ?? {}) };
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries((o.data ?? {}) as Record<string, string>)) out[k] = Buffer.from(v, 'base64').toString('utf8');
  return { ...out, ...(o.stringData ?? {}) };
}

/**
 * Writes `files` under `root` (a stand-in for the container's filesystem)
 * with their modes. As root, files are owned by root:fsGroup as the kubelet
 * does, so a process running as the pod's user reads them only if the mode lets it.
 */
export function writeVolume(root: string, files: VolumeFile[], fsGroup: number | undefined): void {
  const asRoot = process.getuid?.() === 0;
  for (const f of files) {
    const p = join(root, f.path);
    mkdirSync(dirname(p), { recursive: true });
    writeFileSync(p, f.content);
    chmodSync(p, f.mode);
    if (asRoot && fsGroup !== undefined) chownSync(p, 0, fsGroup);
  }
}

// ---------------------------------------------------------------- Dockerfile

export interface Instruction {
  op: string;
  /** --name=value flags before the arguments. */
  flags: Record<string, string>;
  /** The argument text after the flags (continuations joined). */
  rest: string;
  /** The exec (JSON array) form, when the arguments are one. */
  exec?: string[];
  line: number;
}

export interface Stage {
  image: string;
  name: string | undefined;
  instructions: Instruction[];
}

/** Splits leading --flag=value tokens off an argument string. */
function takeFlags(text: string): { flags: Record<string, string>; rest: string } {
  const flags: Record<string, string> = {};
  let rest = text.trim();
  for (;;) {
    const m = /^--([a-z-]+)(?:=(\S*))?\s*/.exec(rest);
    if (m === null) break;
    flags[m[1] as string] = m[2] ?? 'true';
    rest = rest.slice(m[0].length);
  }
  return { flags, rest };
}

/**
 * Parses a Dockerfile into stages: comments and blank lines dropped, `\`
 * continuations joined, global ARG defaults substituted into FROM lines,
 * JSON-array arguments decoded. Enough for the instructions Postern's
 * Dockerfile uses; anything it does not understand is left for the caller.
 */
export function parseDockerfile(text: string): { args: Record<string, string>; stages: Stage[] } {
  const logical: Array<{ text: string; line: number }> = [];
  let buf = '';
  let start = 0;
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/\r$/, '');
    if (buf === '' && (/^\s*#/.test(line) || line.trim() === '')) return;
    if (buf === '') start = i + 1;
    if (/\\\s*$/.test(line)) {
      buf += `${line.replace(/\\\s*$/, '')} `;
      return;
    }
    buf += line;
    logical.push({ text: buf.trim(), line: start });
    buf = '';
  });
  if (buf !== '') logical.push({ text: buf.trim(), line: start });

  const args: Record<string, string> = {};
  const stages: Stage[] = [];
  const subst = (s: string) => s.replace(/\$\{(\w+)\}|\$(\w+)/g, (m, a, b) => args[(a ?? b) as string] ?? m);
  for (const { text: t, line } of logical) {
    const m = /^(\w+)\s*(.*)$/s.exec(t);
    if (m === null) throw new Error(`Dockerfile line ${line}: cannot parse "${t}"`);
    const op = (m[1] as string).toUpperCase();
    const { flags, rest } = takeFlags(m[2] as string);
    if (op === 'ARG' && stages.length === 0) {
      const [k, v] = rest.split('=', 2);
      args[(k as string).trim()] = (v ?? '').trim();
      continue;
    }
    if (op === 'FROM') {
      const f = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(subst(rest));
      if (f === null) throw new Error(`Dockerfile line ${line}: cannot parse FROM "${rest}"`);
      stages.push({ image: f[1] as string, name: f[2], instructions: [] });
      continue;
    }
    const stage = stages[stages.length - 1];
    if (stage === undefined) throw new Error(`Dockerfile line ${line}: ${op} before FROM`);
    const ins: Instruction = { op, flags, rest, line };
    const body = op === 'HEALTHCHECK' ? rest.replace(/^CMD\s+/i, '') : rest;
    if (body.startsWith('[')) ins.exec = JSON.parse(body) as string[];
    stage.instructions.push(ins);
  }
  return { args, stages };
}

export function readDockerfile(): { args: Record<string, string>; stages: Stage[] } {
  return parseDockerfile(readFileSync('Dockerfile', 'utf8'));
}

/** Instructions of one kind in a stage. */
export function ops(stage: Stage, op: string): Instruction[] {
  return stage.instructions.filter((i) => i.op === op);
}

/** COPY sources and destination: the exec form or whitespace-separated words. */
export function copyArgs(ins: Instruction): { sources: string[]; dest: string } {
  const words = ins.exec ?? ins.rest.split(/\s+/).filter((w) => w !== '');
  if (words.length < 2) throw new Error(`Dockerfile line ${ins.line}: COPY needs a source and a destination`);
  return { sources: words.slice(0, -1), dest: words[words.length - 1] as string };
}

// ---------------------------------------------------------------- .dockerignore

/** One .dockerignore rule as a regular expression over context-relative paths. */
function ruleRegex(pattern: string): RegExp {
  let p = pattern.replace(/^\/+/, '').replace(/\/+$/, '');
  if (p.startsWith('./')) p = p.slice(2);
  let re = '';
  for (let i = 0; i < p.length; i++) {
    const c = p[i] as string;
    if (c === '*' && p[i + 1] === '*') {
      re += '.*';
      i++;
      if (p[i + 1] === '/') i++;
    } else if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

/**
 * Whether Docker sends `path` (relative to the context) to the build, per
 * .dockerignore: the last rule that matches the path or one of its parent
 * folders decides; `!` rules re-include.
 */
export function dockerIgnoreFilter(text: string): (path: string) => boolean {
  const rules = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'))
    .map((l) => (l.startsWith('!') ? { include: true, re: ruleRegex(l.slice(1).trim()) } : { include: false, re: ruleRegex(l) }));
  return (path) => {
    const parts = path.split('/');
    const prefixes = parts.map((_, i) => parts.slice(0, i + 1).join('/'));
    let included = true;
    for (const r of rules) if (prefixes.some((p) => r.re.test(p))) included = r.include;
    return included;
  };
}

/**
 * The build context Docker would send from the repository root: files git
 * knows (tracked, or new and not ignored) that exist on disk, filtered by .dockerignore.
 */
export function buildContextFiles(): string[] {
  const listed = execFileSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { encoding: 'utf8' })
    .split('\0')
    .filter((f) => f !== '');
  const keep = dockerIgnoreFilter(readFileSync('.dockerignore', 'utf8'));
  return [...new Set(listed)].filter((f) => keep(f) && isFile(f)).sort();
}

function isFile(p: string): boolean {
  try {
    return statSync(p).isFile();
  } catch {
    return false;
  }
}

/** Files under `dir` (relative to it), recursively. */
export function filesUnder(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else out.push(relative(dir, p));
    }
  };
  walk(dir);
  return out.sort();
}

// ---------------------------------------------------------------- PromQL

export interface PromRefs {
  /** Metric names selected (histogram series keep their _bucket/_sum/_count suffix). */
  metrics: Array<{ name: string; matcherLabels: string[] }>;
  /** Labels named in by/without/on/ignoring/group_left/group_right clauses. */
  groupingLabels: string[];
  /** label_values(metric, label) in template queries: the label. */
  valuesLabel?: string;
}

const PROMQL_WORDS = new Set([
  'by',
  'without',
  'on',
  'ignoring',
  'group_left',
  'group_right',
  'bool',
  'and',
  'or',
  'unless',
  'offset',
  'inf',
  'nan',
]);

/**
 * The metric names and label names a PromQL expression (or a Grafana
 * `label_values(...)` query) refers to. Grafana variables ($x, ${x},
 * $__rate_interval) are replaced first. Function and aggregation names are
 * the identifiers followed by `(`; everything else that is an identifier
 * outside braces, brackets and strings is a metric name.
 */
export function promRefs(expression: string): PromRefs {
  let expr = expression.replace(/\$\{[^}]+\}|\$\w+/g, 'VAR');
  let valuesLabel: string | undefined;
  const lv = /^\s*label_values\(\s*(.+?)\s*,\s*([a-zA-Z_]\w*)\s*\)\s*$/s.exec(expr);
  if (lv !== null) {
    expr = lv[1] as string;
    valuesLabel = lv[2] as string;
  }
  const strings: string[] = [];
  expr = expr.replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, (s) => {
    strings.push(s);
    return '""';
  });
  const groupingLabels: string[] = [];
  expr = expr.replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)/g, (_m, _kw, list: string) => {
    for (const l of list.split(',')) if (l.trim() !== '') groupingLabels.push(l.trim());
    return ' ';
  });
  expr = expr.replace(/\[[^\]]*\]/g, ' ');
  const metrics: PromRefs['metrics'] = [];
  const re = /([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?\s*(\()?/g;
  for (let m = re.exec(expr); m !== null; m = re.exec(expr)) {
    const [, name, braces, paren] = m;
    const before = expr[m.index - 1];
    if (before !== undefined && /[0-9.]/.test(before)) continue; // part of a number such as 1e3
    if (paren !== undefined && braces === undefined) continue; // a function or an aggregation
    if (PROMQL_WORDS.has((name as string).toLowerCase()) || name === 'VAR') continue;
    const matcherLabels = braces === undefined ? [] : [...braces.matchAll(/([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)/g)].map((x) => x[1] as string);
    metrics.push({ name: name as string, matcherLabels });
  }
  // A selector with only braces ({__name__="x"}) names its metric in a matcher.
  for (const s of expr.matchAll(/(^|[^a-zA-Z0-9_:])\{([^}]*)\}/g)) {
    if (/__name__/.test(s[2] as string)) throw new Error(`__name__ selectors are not supported: ${expression}`);
  }
  const out: PromRefs = { metrics, groupingLabels };
  if (valuesLabel !== undefined) out.valuesLabel = valuesLabel;
  return out;
}

/** Sample names and their label names, and TYPE-declared families, from a /metrics exposition. */
export function parseExposition(text: string): { families: Map<string, string>; samples: Map<string, Set<string>> } {
  const families = new Map<string, string>();
  const samples = new Map<string, Set<string>>();
  for (const line of text.split('\n')) {
    const t = /^# TYPE (\S+) (\S+)/.exec(line);
    if (t !== null) {
      families.set(t[1] as string, t[2] as string);
      continue;
    }
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s/.exec(line);
    if (m === null) continue;
    const labels = samples.get(m[1] as string) ?? new Set<string>();
    for (const l of (m[3] ?? '').matchAll(/([a-zA-Z_]\w*)="/g)) labels.add(l[1] as string);
    samples.set(m[1] as string, labels);
  }
  return { families, samples };
}

/** Every PromQL expression in a Grafana dashboard: panel targets and query variables. */
export function dashboardQueries(dashboard: Obj): Array<{ where: string; expr: string }> {
  const out: Array<{ where: string; expr: string }> = [];
  const panels = (ps: Obj[]): void => {
    for (const p of ps) {
      for (const t of (p.targets ?? []) as Obj[]) out.push({ where: `panel "${p.title}" ${t.refId}`, expr: t.expr as string });
      if (Array.isArray(p.panels)) panels(p.panels as Obj[]);
    }
  };
  panels((dashboard.panels ?? []) as Obj[]);
  for (const v of (dashboard.templating?.list ?? []) as Obj[]) {
    if (v.type !== 'query') continue;
    const q = typeof v.query === 'string' ? v.query : (v.query?.query as string);
    out.push({ where: `variable $${v.name}`, expr: q });
  }
  return out;
}
