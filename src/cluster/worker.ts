// A worker process of `workers: N`: a whole Postern (its own sessions, pools
// and counters) serving the client port that node:cluster shares, plus the
// IPC side that makes the workers one instance: control commands run
// everywhere, cancel requests find the worker that owns the session, and the
// admin console sees every worker's snapshot.

import cluster from 'node:cluster';
import { type ControlCommand, type ControlOutcome, runControl } from '../admin/control.ts';
import { dashboardHostOf } from '../admin/dashboard.ts';
import { mergeSnapshots } from '../admin/merge.ts';
import { collect, type Snapshot } from '../admin/snapshot.ts';
import { setServerIdSpace } from '../backend/server-conn.ts';
import type { Config } from '../config/schema.ts';
import type { Peers } from '../context.ts';
import { createLogger } from '../observability/log.ts';
import { Postern } from '../server.ts';
import { ENV, isMessage, type PrimaryToWorker, type WorkerToPrimary } from './messages.ts';

class WorkerPeers implements Peers {
  readonly index: number;
  readonly count: number;
  #postern: Postern | null = null;
  #nextId = 1;
  #waiting = new Map<number, (value: unknown) => void>();

  constructor(index: number, count: number) {
    this.index = index;
    this.count = count;
  }

  attach(postern: Postern): void {
    this.#postern = postern;
  }

  #send(m: WorkerToPrimary): void {
    if (process.connected) process.send?.(m);
  }

  #request(m: { op: 'snapshots' } | { op: 'control'; cmd: ControlCommand; who: string }): Promise<unknown> {
    const id = this.#nextId++;
    return new Promise((resolve) => {
      this.#waiting.set(id, resolve);
      this.#send({ t: 'req', id, ...m } as WorkerToPrimary);
    });
  }

  async everywhere(cmd: ControlCommand, who: string, alive: () => boolean): Promise<ControlOutcome[]> {
    const ctx = this.#postern?.ctx;
    if (ctx === undefined) return [];
    const [mine, others] = await Promise.all([runControl(ctx, cmd, who, alive), this.#request({ op: 'control', cmd, who })]);
    return [mine, ...(others as ControlOutcome[])];
  }

  cancel(pid: number, key: Buffer): void {
    this.#send({ t: 'cancel', pid, key: key.toString('hex') });
  }

  /** Every worker's snapshot, merged (the console's view of the instance). */
  async snapshots(): Promise<Snapshot> {
    return mergeSnapshots((await this.#request({ op: 'snapshots' })) as Snapshot[]);
  }

  /** What the primary asked this worker for. */
  async #answer(postern: Postern, m: Extract<PrimaryToWorker, { t: 'ask' }>): Promise<unknown> {
    switch (m.op) {
      case 'snapshot':
        return collect(postern.ctx, this.index);
      case 'control':
        return runControl(postern.ctx, m.cmd, m.who);
      case 'dash-login':
        // The dashboard is served by the primary; this worker's secrets and throttle check its logins.
        return dashboardHostOf(postern.ctx).login(m.user, m.password, m.addr);
      case 'dash-exec':
        try {
          await dashboardHostOf(postern.ctx).execute(m.sql, m.user);
          return { ok: true };
        } catch (e) {
          const err = e as Error & { sqlstate?: string };
          return { error: err.message, sqlstate: err.sqlstate ?? null };
        }
      default:
        return m satisfies never;
    }
  }

  async onMessage(m: PrimaryToWorker): Promise<void> {
    const postern = this.#postern;
    switch (m.t) {
      case 'done': {
        const resolve = this.#waiting.get(m.id);
        this.#waiting.delete(m.id);
        resolve?.(m.value);
        return;
      }
      case 'ask': {
        if (postern === null) return;
        this.#send({ t: 'res', id: m.id, value: await this.#answer(postern, m) });
        return;
      }
      case 'cancel':
        // Only the worker that owns the session acts; the others say nothing, as for an unknown key.
        postern?.ctx.cancelByKey(m.pid, Buffer.from(m.key, 'hex'));
        return;
      case 'reload':
        if (postern !== null) {
          const problems = postern.reload(postern.configFile);
          if (problems.length > 0) postern.log.warn({ problems }, 'SIGHUP: reload refused, running configuration kept');
        }
        return;
      case 'stop':
        await postern?.shutdown();
        process.exit(0);
        return;
      default:
        m satisfies never;
    }
  }
}

/** Runs this process as worker ENV.index of ENV.count; resolves when it has shut down. */
export async function runWorker(config: Config, configFile: string): Promise<void> {
  const index = Number(process.env[ENV.index]);
  const count = Number(process.env[ENV.count]);
  if (!cluster.isWorker || !Number.isInteger(index) || !Number.isInteger(count))
    throw new Error('runWorker outside a Postern worker process');
  const peers = new WorkerPeers(index, count);
  setServerIdSpace(index, count);
  const logger = createLogger(config.log.level).child({ worker: index });
  const postern = new Postern(config, { logger, configFile, peers, adminHttp: false });
  peers.attach(postern);
  postern.ctx.snapshot = () => peers.snapshots();
  process.on('message', (m: unknown) => {
    if (!isMessage(m)) return;
    peers.onMessage(m as PrimaryToWorker).catch((e: Error) => postern.log.error({ err: e.message }, 'worker message failed'));
  });
  // The primary went away (crash, SIGKILL): end sessions rather than serve alone.
  process.on('disconnect', () => {
    postern.shutdown().then(() => process.exit(0));
  });
  // Ctrl-C reaches every process of the group: shut down gracefully, once.
  const stop = (): void => {
    postern.shutdown().then(() => process.exit(0));
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  process.on('SIGHUP', () => undefined);
  await postern.listen();
  await postern.stopped;
  process.exit(0);
}
