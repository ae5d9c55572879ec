// The live web dashboard on admin.listen (docs/dashboard.md): the page and
// its assets (built into dist/admin/web by scripts/build-web.mjs), a JSON view
// of the instance rendered from the same Snapshot the console uses, a
// Server-Sent Events stream of that view once a second, and the console's
// control commands (PAUSE, RESUME, KILL, RELOAD) for admin.users. Every route
// needs HTTP basic auth of an admin.users or admin.stats_users role, checked
// against the secrets clients authenticate with (users file, auth_query) and
// throttled like client logins. No secret is ever part of a response.

import { createHmac, randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import type http from 'node:http';
import { fileURLToPath } from 'node:url';
import { checkCleartextPassword } from '../auth/client-auth.ts';
import type { Context } from '../context.ts';
import type { Logger } from '../observability/log.ts';
import { LOOKUP_FAILED, lookupSecret } from '../routing/lookup.ts';
import { SHAPE_BOUNDS_US } from '../stats/histogram.ts';
import { LATENCY_BUCKETS, quantileOf } from '../stats/history.ts';
import { adminExecutor, percentile } from './executor.ts';
import { type Snapshot, snapshotOf } from './snapshot.ts';

export type DashRole = 'admin' | 'stats';

/** What the dashboard needs from the instance (one process, or the primary of `workers: N`). */
export interface DashboardHost {
  snapshot(): Promise<Snapshot>;
  /** The role of these credentials, or null (wrong password, unknown or not an admin role, throttled). */
  login(user: string, password: string, addr: string): Promise<DashRole | null>;
  /** Runs a console command as `user` through the console's executor; rejects with the console's error. */
  execute(sql: string, user: string): Promise<void>;
  /** Live streams served at once (admin.max_streams). */
  maxStreams(): number;
}

/** The DashboardHost of one process's context (also what a worker answers the primary with). */
export function dashboardHostOf(ctx: Context): DashboardHost {
  return {
    snapshot: () => snapshotOf(ctx),
    login: async (user, password, addr) => {
      const a = ctx.config.admin;
      const role: DashRole | null = a.users.includes(user) ? 'admin' : a.stats_users.includes(user) ? 'stats' : null;
      if (ctx.throttle.isThrottled(addr)) {
        ctx.throttle.throttledTotal++;
        ctx.count(ctx.stats.loginFailures, 'throttled');
        ctx.stats.events.add('throttled', { addr, user, via: 'dashboard' });
        await new Promise((r) => setTimeout(r, ctx.throttle.delayMs).unref());
        return null;
      }
      // The admin console's own database name: auth_query runs where the console's lookups run.
      const secret = role === null ? null : await lookupSecret(ctx, user, 'postern', ctx.log);
      const out = await checkCleartextPassword(user, secret === LOOKUP_FAILED ? null : secret, password);
      if (out.kind === 'ok' && role !== null) {
        ctx.count(ctx.stats.logins, 'dashboard/ok');
        return role;
      }
      const reason = role === null ? 'not_admin_user' : 'bad_password';
      ctx.count(ctx.stats.logins, 'dashboard/fail');
      ctx.count(ctx.stats.loginFailures, reason);
      ctx.throttle.recordFailure(addr);
      ctx.stats.events.add('login_failed', { user, database: 'dashboard', addr, reason });
      ctx.log.info({ user, addr, reason }, 'dashboard login failed');
      return null;
    },
    execute: async (sql, user) => {
      const readOnly = !ctx.config.admin.users.includes(user);
      await adminExecutor(ctx, { readOnly, clientId: 0, user }).execute(sql);
    },
    maxStreams: () => ctx.config.admin.max_streams,
  };
}

/** Where the built page is: next to this module in dist/, or dist/ from a test build (build/src/admin). */
function webDir(): string | null {
  for (const rel of ['./web/', '../../../dist/admin/web/']) {
    const p = fileURLToPath(new URL(rel, import.meta.url));
    if (existsSync(`${p}index.html`)) return p;
  }
  return null;
}

const ASSETS: Record<string, { file: string; type: string }> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/index.html': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/assets/app.js': { file: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/assets/app.css': { file: 'app.css', type: 'text/css; charset=utf-8' },
};

/** No inline script or style, nothing from another origin, no framing. */
const SECURITY_HEADERS: Record<string, string> = {
  'content-security-policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'x-frame-options': 'DENY',
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
  'cache-control': 'no-store',
};

/** Verified credentials are remembered this long (a SCRAM check derives keys: not once per request). */
const AUTH_CACHE_MS = 30_000;
const AUTH_CACHE_MAX = 256;
/** A stream whose client reads slower than this much buffered data is dropped. */
const STREAM_MAX_BUFFERED = 4 * 1024 * 1024;
const TILE_WINDOW_S = 10;
const TOP_SHAPES = 200;
const EVENTS_SHOWN = 100;
/** Database names the action endpoint passes on to the console grammar. */
const NAME_RE = /^[A-Za-z0-9_][A-Za-z0-9_.$-]{0,62}$/;

/** The JSON view the page renders (GET /api/state, each SSE `state` event). */
export function dashboardView(s: Snapshot, role: DashRole, user: string, history: 'all' | number = 'all'): Record<string, unknown> {
  const series = s.series;
  const n = series.t.length;
  const from = history === 'all' ? 0 : Math.max(0, n - history);
  const col = (name: string): number[] => (series.values[name] ?? []).slice(from);
  const pct = (q: number): number[] => series.latency.slice(from).map((c) => quantileOf(c, q));
  const errorsByClass: Record<string, number[]> = {};
  for (const name of Object.keys(series.values)) if (name.startsWith('errors_')) errorsByClass[name.slice(7)] = col(name);
  // Tiles: the newest complete second's rates; latency over the last seconds.
  const last = (name: string): number => series.values[name]?.[n - 1] ?? 0;
  const recent = new Array(LATENCY_BUCKETS).fill(0);
  for (const c of series.latency.slice(Math.max(0, n - TILE_WINDOW_S))) for (let b = 0; b < LATENCY_BUCKETS; b++) recent[b] += c[b] ?? 0;
  const byState = (rows: Array<{ state: string }>): Record<string, number> => {
    const out: Record<string, number> = {};
    for (const r of rows) out[r.state] = (out[r.state] ?? 0) + 1;
    return out;
  };
  const shapes = [...s.shapes]
    .sort((a, b) => b.total_us - a.total_us)
    .slice(0, TOP_SHAPES)
    .map((sh) => ({
      fingerprint: sh.fingerprint,
      query: sh.query,
      database: sh.database,
      user: sh.user,
      application_name: sh.application_name,
      calls: sh.calls,
      errors: sh.errors,
      rows: sh.rows,
      total_time_us: Math.round(sh.total_us),
      mean_time_us: sh.calls > 0 ? Math.round(sh.total_us / sh.calls) : 0,
      p50_us: percentile(sh, 0.5),
      p95_us: percentile(sh, 0.95),
      p99_us: percentile(sh, 0.99),
      first_seen: sh.first_seen,
      last_seen: sh.last_seen,
      // The latency histogram of the detail view: non-empty buckets as [upper bound µs, count].
      hist: sh.hist.flatMap((c, i) => (c > 0 ? [[SHAPE_BOUNDS_US[i] ?? null, c]] : [])),
    }));
  return {
    at: s.at,
    startedAt: s.startedAt,
    me: { user, role, actions: role === 'admin' },
    tiles: {
      clients: byState(s.clients),
      servers: byState(s.servers),
      tps: last('tps'),
      qps: last('qps'),
      errors: last('errors'),
      p50_us: quantileOf(recent, 0.5),
      p95_us: quantileOf(recent, 0.95),
      p99_us: quantileOf(recent, 0.99),
    },
    series: {
      t: series.t.slice(from),
      tps: col('tps'),
      qps: col('qps'),
      p50_us: pct(0.5),
      p95_us: pct(0.95),
      p99_us: pct(0.99),
      cl_waiting: col('cl_waiting'),
      wait_us: col('wait_us'),
      errors: col('errors'),
      errors_by_class: errorsByClass,
      bytes_in: col('bytes_in'),
      bytes_out: col('bytes_out'),
    },
    pools: s.pools,
    clients: s.clients.map((c) => ({ ...c, link: c.link ?? '' })),
    servers: s.servers.map((c) => ({ ...c, link: c.link ?? '' })),
    hosts: s.hosts,
    shapes,
    events: s.events.slice(-EVENTS_SHOWN).reverse(),
    paused: s.paused,
    disabled: s.disabled,
  };
}

interface Stream {
  res: http.ServerResponse;
  role: DashRole;
  user: string;
  /** Timestamp of the newest series point this stream has. */
  sent: number;
}

export class Dashboard {
  readonly #host: DashboardHost;
  readonly #log: Logger;
  readonly #dir: string | null;
  readonly #assets = new Map<string, Buffer>();
  readonly #authKey = randomBytes(32);
  /** HMAC of user:password -> role and expiry; never the password itself. */
  readonly #authCache = new Map<string, { role: DashRole; expires: number }>();
  readonly #streams = new Set<Stream>();
  #timer: NodeJS.Timeout | null = null;
  #busy = false;

  constructor(host: DashboardHost, log: Logger) {
    this.#host = host;
    this.#log = log;
    this.#dir = webDir();
    if (this.#dir === null) log.warn('dashboard assets not found (run npm run build); / answers 503');
  }

  get streams(): number {
    return this.#streams.size;
  }

  #headers(type: string, extra: Record<string, string> = {}): Record<string, string> {
    return { ...SECURITY_HEADERS, 'content-type': type, ...extra };
  }

  #send(res: http.ServerResponse, status: number, body: unknown): void {
    res.writeHead(status, this.#headers('application/json; charset=utf-8'));
    res.end(`${JSON.stringify(body)}\n`);
  }

  /** Handles a dashboard route; false when the path is not one (the caller answers 404). */
  async handle(req: http.IncomingMessage, res: http.ServerResponse, path: string): Promise<boolean> {
    const asset = ASSETS[path];
    const api = path.startsWith('/api/');
    if (asset === undefined && !api) return false;
    const who = await this.#authenticate(req);
    if (who === null) {
      res.writeHead(
        401,
        this.#headers('application/json; charset=utf-8', { 'www-authenticate': 'Basic realm="Postern dashboard", charset="UTF-8"' }),
      );
      res.end('{"error":"authentication required"}\n');
      return true;
    }
    if (asset !== undefined) {
      if (req.method !== 'GET' && req.method !== 'HEAD') return this.#method(res, 'GET, HEAD');
      const body = this.#asset(asset.file);
      if (body === null) {
        res.writeHead(503, this.#headers('text/plain; charset=utf-8'));
        res.end('dashboard assets are not built (npm run build)\n');
        return true;
      }
      res.writeHead(200, this.#headers(asset.type, { 'content-length': String(body.length) }));
      res.end(req.method === 'HEAD' ? undefined : body);
      return true;
    }
    switch (path) {
      case '/api/me':
        this.#send(res, 200, { user: who.user, role: who.role, actions: who.role === 'admin' });
        return true;
      case '/api/state':
        if (req.method !== 'GET') return this.#method(res, 'GET');
        this.#send(res, 200, dashboardView(await this.#host.snapshot(), who.role, who.user));
        return true;
      case '/api/stream':
        if (req.method !== 'GET') return this.#method(res, 'GET');
        await this.#openStream(req, res, who);
        return true;
      case '/api/action':
        if (req.method !== 'POST') return this.#method(res, 'POST');
        await this.#action(req, res, who);
        return true;
      default:
        this.#send(res, 404, { error: 'no such endpoint' });
        return true;
    }
  }

  #method(res: http.ServerResponse, allow: string): true {
    res.writeHead(405, this.#headers('application/json; charset=utf-8', { allow }));
    res.end('{"error":"method not allowed"}\n');
    return true;
  }

  #asset(file: string): Buffer | null {
    const have = this.#assets.get(file);
    if (have !== undefined) return have;
    if (this.#dir === null) return null;
    try {
      const b = readFileSync(`${this.#dir}${file}`);
      this.#assets.set(file, b);
      return b;
    } catch {
      return null;
    }
  }

  async #authenticate(req: http.IncomingMessage): Promise<{ user: string; role: DashRole } | null> {
    const h = req.headers.authorization;
    if (h === undefined || !/^basic /i.test(h)) return null;
    const decoded = Buffer.from(h.slice(6).trim(), 'base64').toString('utf8');
    const i = decoded.indexOf(':');
    if (i <= 0) return null;
    const user = decoded.slice(0, i);
    const password = decoded.slice(i + 1);
    const key = createHmac('sha256', this.#authKey).update(`${user}\u0000${password}`).digest('base64');
    const now = Date.now();
    const cached = this.#authCache.get(key);
    if (cached !== undefined && cached.expires > now) return { user, role: cached.role };
    const role = await this.#host.login(user, password, req.socket.remoteAddress ?? '');
    if (role === null) {
      this.#authCache.delete(key);
      return null;
    }
    if (this.#authCache.size >= AUTH_CACHE_MAX) this.#authCache.clear();
    this.#authCache.set(key, { role, expires: now + AUTH_CACHE_MS });
    return { user, role };
  }

  async #action(req: http.IncomingMessage, res: http.ServerResponse, who: { user: string; role: DashRole }): Promise<void> {
    // A cross-site form cannot set this header nor a JSON body without a CORS preflight, which is never answered.
    const origin = req.headers.origin;
    const host = req.headers.host;
    if (
      req.headers['x-postern-action'] !== '1' ||
      !(req.headers['content-type'] ?? '').startsWith('application/json') ||
      (origin !== undefined && host !== undefined && new URL(origin).host !== host)
    ) {
      this.#send(res, 403, { error: 'actions need the dashboard page (same origin, X-Postern-Action header, JSON body)' });
      return;
    }
    if (who.role !== 'admin') {
      this.#send(res, 403, { error: 'admin access needed' });
      return;
    }
    let body: { verb?: unknown; database?: unknown; client?: unknown };
    try {
      body = JSON.parse(await readBody(req, 4096)) as typeof body;
    } catch {
      this.#send(res, 400, { error: 'expected a JSON body' });
      return;
    }
    const verb = body.verb;
    const db = body.database;
    if (db !== undefined && db !== null && (typeof db !== 'string' || !NAME_RE.test(db))) {
      this.#send(res, 400, { error: 'invalid database name' });
      return;
    }
    let sql: string;
    if ((verb === 'PAUSE' || verb === 'RESUME' || verb === 'KILL') && typeof db === 'string') sql = `${verb} ${db}`;
    else if (verb === 'RELOAD') sql = 'RELOAD';
    else if (verb === 'KILL_CLIENT' && typeof body.client === 'number' && Number.isInteger(body.client)) sql = `KILL_CLIENT ${body.client}`;
    else {
      this.#send(res, 400, { error: 'verb must be PAUSE, RESUME or KILL with a database, RELOAD, or KILL_CLIENT with a client id' });
      return;
    }
    this.#log.info({ admin: who.user, command: sql, via: 'dashboard' }, 'dashboard action');
    try {
      await this.#host.execute(sql, who.user);
      this.#send(res, 200, { ok: true, command: sql });
    } catch (e) {
      const err = e as Error & { sqlstate?: string; code?: string };
      this.#send(res, err.sqlstate === '42501' ? 403 : 400, { error: err.message, sqlstate: err.sqlstate ?? null });
    }
  }

  async #openStream(req: http.IncomingMessage, res: http.ServerResponse, who: { user: string; role: DashRole }): Promise<void> {
    if (this.#streams.size >= this.#host.maxStreams()) {
      res.writeHead(503, this.#headers('application/json; charset=utf-8', { 'retry-after': '5' }));
      res.end('{"error":"too many dashboard streams (admin.max_streams)"}\n');
      return;
    }
    res.writeHead(200, this.#headers('text/event-stream; charset=utf-8', { connection: 'keep-alive' }));
    req.socket.setNoDelay(true);
    req.socket.setTimeout(0);
    const s: Stream = { res, role: who.role, user: who.user, sent: 0 };
    this.#streams.add(s);
    const drop = (): void => {
      this.#streams.delete(s);
      if (this.#streams.size === 0) this.#stopTimer();
    };
    res.once('close', drop);
    res.write('retry: 2000\n\n');
    const snap = await this.#host.snapshot();
    this.#push(s, snap);
    if (this.#timer === null) {
      this.#timer = setInterval(() => void this.#tick(), 1000);
      this.#timer.unref();
    }
  }

  #stopTimer(): void {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
  }

  /** One snapshot a second for every stream together; each gets the points it does not have yet. */
  async #tick(): Promise<void> {
    if (this.#busy || this.#streams.size === 0) return;
    this.#busy = true;
    try {
      const snap = await this.#host.snapshot();
      for (const s of this.#streams) this.#push(s, snap);
    } catch (e) {
      this.#log.warn({ err: (e as Error).message }, 'dashboard snapshot failed');
    } finally {
      this.#busy = false;
    }
  }

  #push(s: Stream, snap: Snapshot): void {
    if (s.res.writableLength > STREAM_MAX_BUFFERED) {
      // Bounded per connection: a reader that does not keep up is dropped, not buffered for.
      s.res.destroy();
      return;
    }
    const t = snap.series.t;
    const fresh = s.sent === 0 ? 'all' : t.filter((x) => x > s.sent).length;
    const view = dashboardView(snap, s.role, s.user, fresh);
    view.append = s.sent !== 0;
    s.sent = t[t.length - 1] ?? s.sent;
    s.res.write(`event: state\ndata: ${JSON.stringify(view)}\n\n`);
  }

  close(): void {
    this.#stopTimer();
    for (const s of this.#streams) s.res.destroy();
    this.#streams.clear();
  }
}

function readBody(req: http.IncomingMessage, max: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > max) {
        reject(new Error('body too large'));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.once('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.once('error', reject);
  });
}
