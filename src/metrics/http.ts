// The admin HTTP listener (admin.listen): /metrics (Prometheus text format),
// /healthz (the process is up), /readyz (the client listener is open and at
// least one configured server accepts TCP connections) and, with
// admin.dashboard, the live web dashboard at / with its /api/* endpoints
// (admin/dashboard.ts; those need HTTP basic auth). Separate from the client
// port so it can be firewalled apart; HTTPS when admin.tls.cert/key are set.
// It never shows a setting's value or a secret.

import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';
import type { Dashboard } from '../admin/dashboard.ts';
import type { Snapshot } from '../admin/snapshot.ts';
import type { DatabaseConfig } from '../config/schema.ts';
import { splitHostPort } from '../config/units.ts';
import type { Logger } from '../observability/log.ts';
import { MetricsRegistry } from './registry.ts';

export interface ReadinessProbe {
  /** The client listener is open. */
  listening(): boolean;
  /** host:port of every configured server. */
  servers(): Array<{ name: string; host: string; port: number }>;
}

/** How long a server reachability answer is reused (probes come often; each check opens a TCP connection). */
const READY_CACHE_MS = 1000;
const CONNECT_TIMEOUT_MS = 1000;

function reachable(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect({ host, port });
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      sock.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), CONNECT_TIMEOUT_MS);
    timer.unref();
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
  });
}

export interface AdminHttpOptions {
  /** admin.tls: serve HTTPS. */
  tls?: { cert?: string; key?: string };
  /** The web dashboard at / (admin.dashboard). */
  dashboard?: Dashboard | null;
}

export class AdminHttp {
  readonly #server: http.Server | https.Server;
  readonly #metrics: MetricsRegistry;
  readonly #probe: ReadinessProbe;
  readonly #log: Logger;
  #ready: { at: number; body: { ready: boolean; listening: boolean; servers: Record<string, boolean> } } | null = null;

  readonly #dashboard: Dashboard | null;

  constructor(metrics: MetricsRegistry, probe: ReadinessProbe, log: Logger, opts: AdminHttpOptions = {}) {
    this.#metrics = metrics;
    this.#probe = probe;
    this.#log = log;
    this.#dashboard = opts.dashboard ?? null;
    const handler = (req: http.IncomingMessage, res: http.ServerResponse): void => {
      this.#handle(req, res).catch((e: Error) => {
        this.#log.error({ err: e.message }, 'admin http request failed');
        if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
        res.end('internal error\n');
      });
    };
    const tls = opts.tls;
    this.#server =
      tls?.cert !== undefined && tls.key !== undefined
        ? https.createServer({ cert: readFileSync(tls.cert), key: readFileSync(tls.key) }, handler)
        : http.createServer(handler);
    this.#server.keepAliveTimeout = 5000;
  }

  /** admin.tls files that do not load (a key that is not the certificate's): the problem; null when they load. */
  checkTls(t: { cert?: string; key?: string }): { path: string; message: string } | null {
    if (t.cert === undefined || t.key === undefined) return null;
    try {
      tls.createSecureContext({ cert: readFileSync(t.cert), key: readFileSync(t.key) });
      return null;
    } catch (e) {
      return { path: 'admin.tls', message: (e as NodeJS.ErrnoException).code ?? (e as Error).message.split('\n')[0] ?? 'does not load' };
    }
  }

  /** New admin.tls files for the next HTTPS handshakes (checked first with checkTls); plain HTTP stays plain until a restart. */
  replaceTls(t: { cert?: string; key?: string }): void {
    if (!(this.#server instanceof https.Server) || t.cert === undefined || t.key === undefined) return;
    this.#server.setSecureContext({ cert: readFileSync(t.cert), key: readFileSync(t.key) });
  }

  /** The dashboard's live streams now open (tests, docs). */
  get dashboardStreams(): number {
    return this.#dashboard?.streams ?? 0;
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    if (this.#dashboard !== null && (await this.#dashboard.handle(req, res, path))) return;
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' });
      res.end('method not allowed\n');
      return;
    }
    switch (path) {
      case '/metrics': {
        const text = await this.#metrics.scrape();
        res.writeHead(200, { 'content-type': this.#metrics.contentType });
        res.end(req.method === 'HEAD' ? undefined : text);
        return;
      }
      case '/healthz':
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end('ok\n');
        return;
      case '/readyz': {
        const body = await this.#readiness();
        res.writeHead(body.ready ? 200 : 503, { 'content-type': 'application/json' });
        res.end(`${JSON.stringify(body)}\n`);
        return;
      }
      default:
        res.writeHead(404, { 'content-type': 'text/plain' });
        res.end(`not found: try ${this.#dashboard !== null ? '/ (dashboard), ' : ''}/metrics, /healthz or /readyz\n`);
    }
  }

  async #readiness(): Promise<{ ready: boolean; listening: boolean; servers: Record<string, boolean> }> {
    const now = Date.now();
    if (this.#ready !== null && now - this.#ready.at < READY_CACHE_MS) return this.#ready.body;
    const listening = this.#probe.listening();
    const targets = this.#probe.servers();
    const results = await Promise.all(targets.map((t) => reachable(t.host, t.port)));
    const servers: Record<string, boolean> = {};
    targets.forEach((t, i) => {
      servers[t.name] = results[i] as boolean;
    });
    const body = { ready: listening && results.some((r) => r), listening, servers };
    this.#ready = { at: Date.now(), body };
    return body;
  }

  /** Binds to "host:port" (port 0 picks a free one); resolves with the bound port. */
  listen(hostPort: string): Promise<number> {
    const { host, port } = splitHostPort(hostPort);
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen({ host, port }, () => {
        this.#server.removeListener('error', reject);
        resolve((this.#server.address() as net.AddressInfo).port);
      });
    });
  }

  /**
   * The listener of admin.listen for one Postern instance: metrics from
   * `snapshot`, readiness from `listening` and the configured databases.
   */
  static async start(
    hostPort: string,
    snapshot: () => Promise<Snapshot>,
    listening: () => boolean,
    databases: () => Record<string, DatabaseConfig>,
    log: Logger,
    opts: AdminHttpOptions = {},
  ): Promise<{ http: AdminHttp; port: number }> {
    // Every server of every database; a database with several is listed as name@host:port.
    const servers = (): Array<{ name: string; host: string; port: number }> =>
      Object.entries(databases()).flatMap(([name, d]) =>
        d.servers === undefined || d.servers.length === 0
          ? [{ name, host: d.host, port: d.port }]
          : d.servers.map((s) => ({ name: d.servers?.length === 1 ? name : `${name}@${s.host}:${s.port}`, host: s.host, port: s.port })),
      );
    const http = new AdminHttp(new MetricsRegistry(snapshot), { listening, servers }, log, opts);
    const port = await http.listen(hostPort);
    const scheme = opts.tls?.cert !== undefined ? 'https' : 'http';
    log.info({ listen: hostPort, port, scheme, dashboard: opts.dashboard != null }, 'admin http listening');
    if (scheme === 'http' && !/^(127\.|localhost:|\[::1\]:)/.test(hostPort))
      log.warn(
        { listen: hostPort },
        'admin.listen is not a loopback address and admin.tls is unset: dashboard passwords travel in clear text',
      );
    return { http, port };
  }

  close(): Promise<void> {
    this.#dashboard?.close();
    return new Promise((resolve) => {
      this.#server.close(() => resolve());
      this.#server.closeAllConnections();
    });
  }
}
