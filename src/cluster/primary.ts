// The primary process of `workers: N`: forks N workers (node:cluster) that
// share the client port (connections handed out round-robin), relays what
// must cross processes (control commands, cancel requests, snapshot
// requests), serves admin.listen with every worker's metrics merged, and
// owns the signals: SIGHUP reloads every worker, SIGTERM/SIGINT drain them
// all. A worker that dies is replaced; when every worker has exited on
// purpose (SHUTDOWN from the console), the primary exits too.

import cluster, { type Worker } from 'node:cluster';
import { randomBytes } from 'node:crypto';
import { Dashboard, type DashboardHost } from '../admin/dashboard.ts';
import { mergeSnapshots } from '../admin/merge.ts';
import type { Snapshot } from '../admin/snapshot.ts';
import { loadConfigFile } from '../config/load.ts';
import type { Config } from '../config/schema.ts';
import { AdminHttp } from '../metrics/http.ts';
import { createLogger, type Logger } from '../observability/log.ts';
import { ENV, isMessage, type PrimaryToWorker, type WorkerToPrimary } from './messages.ts';

/** How long the primary waits for a worker's answer before going on without it. */
const ASK_TIMEOUT_MS = 10_000;

/** Omit over each member of a union (an ask without its envelope). */
type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;
/** A worker that dies is replaced after this pause (a crash loop must not spin). */
const RESPAWN_DELAY_MS = 1000;

interface Slot {
  index: number;
  worker: Worker | null;
  listening: boolean;
}

export class Primary {
  readonly log: Logger;
  readonly #config: Config;
  /** Read again on reload for the files the primary itself uses (admin.tls). */
  readonly #configFile: string | undefined;
  readonly #count: number;
  readonly #slots: Slot[] = [];
  readonly #mockSecret = randomBytes(32).toString('hex');
  #nextAsk = 1;
  /** Answers the primary waits for: ask id -> collector. */
  #asks = new Map<number, { worker: Worker; resolve: (v: unknown) => void }>();
  #stopping = false;
  #http: AdminHttp | null = null;
  adminPort: number | null = null;
  #done!: () => void;
  /** Resolves when every worker has exited and the primary has closed its listener. */
  readonly stopped = new Promise<void>((r) => {
    this.#done = r;
  });

  constructor(config: Config, count: number, log?: Logger, configFile?: string) {
    this.#config = config;
    this.#configFile = configFile;
    this.#count = count;
    this.log = log ?? createLogger(config.log.level).child({ role: 'primary' });
  }

  /** Forks the workers and resolves once every one of them is listening. */
  async start(): Promise<void> {
    cluster.on('message', (worker, m: unknown) => {
      if (isMessage(m)) this.#onMessage(worker, m as WorkerToPrimary);
    });
    cluster.on('exit', (worker, code, signal) => this.#onExit(worker, code, signal));
    cluster.on('listening', (worker) => {
      const slot = this.#slots.find((s) => s.worker === worker);
      if (slot !== undefined) slot.listening = true;
    });
    for (let i = 0; i < this.#count; i++) {
      this.#slots.push({ index: i, worker: null, listening: false });
      this.#fork(this.#slots[i] as Slot);
    }
    await new Promise<void>((resolve, reject) => {
      const check = (): void => {
        if (this.#slots.every((s) => s.listening)) resolve();
        else if (this.#stopping) reject(new Error('workers exited before listening'));
        else setTimeout(check, 20).unref();
      };
      check();
    });
    const listen = this.#config.admin.listen;
    if (listen !== undefined) {
      const { http, port } = await AdminHttp.start(
        listen,
        () => this.snapshot(),
        () => !this.#stopping && this.#slots.every((s) => s.listening),
        () => this.#config.databases,
        this.log,
        { tls: this.#config.admin.tls, dashboard: this.#config.admin.dashboard ? new Dashboard(this.#dashboardHost(), this.log) : null },
      );
      this.#http = http;
      this.adminPort = port;
    }
    this.log.info({ workers: this.#count }, 'all workers listening');
  }

  /**
   * The dashboard as the primary serves it: the instance's merged snapshot;
   * logins and actions run in one live worker (its secrets, throttle and
   * console; an action such as PAUSE reaches every worker from there). The
   * password crosses the local IPC channel only.
   */
  #dashboardHost(): DashboardHost {
    const one = (): Worker => {
      const w = this.#live()[0];
      if (w === undefined) throw new Error('no worker is running');
      return w;
    };
    return {
      snapshot: () => this.snapshot(),
      login: async (user, password, addr) => {
        const role = await this.#ask(one(), { op: 'dash-login', user, password, addr }, ASK_TIMEOUT_MS + this.#config.auth.throttle_delay);
        return role === 'admin' || role === 'stats' ? role : null;
      },
      execute: async (sql, user) => {
        const out = (await this.#ask(one(), { op: 'dash-exec', sql, user }, null)) as
          | { ok?: boolean; error?: string; sqlstate?: string | null }
          | undefined;
        if (out?.ok === true) return;
        const err = new Error(out?.error ?? 'the worker running the action went away') as Error & { sqlstate?: string };
        if (out?.sqlstate !== undefined && out.sqlstate !== null) err.sqlstate = out.sqlstate;
        throw err;
      },
      maxStreams: () => this.#config.admin.max_streams,
    };
  }

  #fork(slot: Slot): void {
    slot.listening = false;
    slot.worker = cluster.fork({
      [ENV.index]: String(slot.index),
      [ENV.count]: String(this.#count),
      [ENV.mockSecret]: this.#mockSecret,
    });
  }

  #onExit(worker: Worker, code: number | null, signal: string | null): void {
    const slot = this.#slots.find((s) => s.worker === worker);
    if (slot === undefined) return;
    slot.worker = null;
    slot.listening = false;
    // Answers it still owed will not come.
    for (const [id, a] of this.#asks) {
      if (a.worker === worker) {
        this.#asks.delete(id);
        a.resolve(undefined);
      }
    }
    if (this.#stopping || code === 0) {
      // On purpose (SIGTERM, SHUTDOWN): when the last one is gone, so is the instance.
      this.#stopping = true;
      if (this.#slots.every((s) => s.worker === null)) this.#finish();
      return;
    }
    this.log.error({ worker: slot.index, code, signal }, 'worker died; starting a new one');
    setTimeout(() => {
      if (!this.#stopping) this.#fork(slot);
    }, RESPAWN_DELAY_MS).unref();
  }

  #finish(): void {
    const http = this.#http;
    this.#http = null;
    (http?.close() ?? Promise.resolve()).then(() => {
      this.log.info('shut down');
      this.#done();
    });
  }

  #send(worker: Worker, m: PrimaryToWorker): void {
    if (worker.isConnected()) worker.send(m);
  }

  /** Asks one worker; resolves with its answer, or undefined when it died or timed out. */
  #ask(
    worker: Worker,
    m: DistributiveOmit<Extract<PrimaryToWorker, { t: 'ask' }>, 't' | 'id'>,
    timeoutMs: number | null,
  ): Promise<unknown> {
    const id = this.#nextAsk++;
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | null = null;
      this.#asks.set(id, {
        worker,
        resolve: (v) => {
          if (timer !== null) clearTimeout(timer);
          resolve(v);
        },
      });
      if (timeoutMs !== null) {
        timer = setTimeout(() => {
          this.#asks.delete(id);
          resolve(undefined);
        }, timeoutMs);
        timer.unref();
      }
      this.#send(worker, { t: 'ask', id, ...m } as PrimaryToWorker);
    });
  }

  #live(except?: Worker): Worker[] {
    return this.#slots.flatMap((s) => (s.worker !== null && s.worker !== except ? [s.worker] : []));
  }

  /** Every live worker's snapshot. */
  async snapshots(): Promise<Snapshot[]> {
    const all = await Promise.all(this.#live().map((w) => this.#ask(w, { op: 'snapshot' }, ASK_TIMEOUT_MS)));
    return all.filter((s): s is Snapshot => s !== undefined);
  }

  /** The whole instance's snapshot (/metrics). */
  async snapshot(): Promise<Snapshot> {
    return mergeSnapshots(await this.snapshots());
  }

  #onMessage(worker: Worker, m: WorkerToPrimary): void {
    switch (m.t) {
      case 'res': {
        const a = this.#asks.get(m.id);
        this.#asks.delete(m.id);
        a?.resolve(m.value);
        return;
      }
      case 'cancel':
        for (const w of this.#live(worker)) this.#send(w, { t: 'cancel', pid: m.pid, key: m.key });
        return;
      case 'req':
        if (m.op === 'snapshots') {
          this.snapshots().then((value) => this.#send(worker, { t: 'done', id: m.id, value }));
        } else {
          if ((m.cmd as { verb?: unknown } | null)?.verb === 'RELOAD') this.#reloadAdminTls();
          // Control commands may wait long (PAUSE): no timeout; a worker that dies answers undefined.
          Promise.all(this.#live(worker).map((w) => this.#ask(w, { op: 'control', cmd: m.cmd, who: m.who }, null))).then((outcomes) =>
            this.#send(worker, { t: 'done', id: m.id, value: outcomes.filter((o) => o !== undefined) }),
          );
        }
        return;
      default:
        m satisfies never;
    }
  }

  /** SIGHUP: every worker re-reads the config and authentication files; the primary its admin.tls files. */
  reload(): void {
    this.log.info('SIGHUP: reloading every worker');
    for (const w of this.#live()) this.#send(w, { t: 'reload' });
    this.#reloadAdminTls();
  }

  /** The admin listener's certificate and key, read again (SIGHUP, or RELOAD in a worker's console). */
  #reloadAdminTls(): void {
    if (this.#configFile === undefined || this.#http === null) return;
    const loaded = loadConfigFile(this.#configFile);
    // A broken file is reported by the workers, which refuse it too.
    if (!loaded.ok) return;
    const t = loaded.config.admin.tls;
    if (t.cert === undefined || t.key === undefined) return;
    const problem = this.#http.checkTls(t);
    if (problem !== null) this.log.warn({ problems: [problem] }, 'reload refused for admin.tls: the running certificate stays');
    else this.#http.replaceTls(t);
  }

  /** SIGTERM/SIGINT: every worker drains and exits; resolves when all are gone. */
  stop(): Promise<void> {
    this.#stopping = true;
    const live = this.#live();
    if (live.length === 0) this.#finish();
    for (const w of live) this.#send(w, { t: 'stop' });
    return this.stopped;
  }
}
