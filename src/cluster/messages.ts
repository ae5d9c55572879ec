// Messages between the primary process and its workers (workers: N), over
// node:cluster's IPC channel. Plain JSON-serializable objects only; a cancel
// key travels as hex.
//
//   worker -> primary   req      {id, op: 'snapshots'}            every worker's Snapshot, for the console
//                       req      {id, op: 'control', cmd, who}    run a control command in every other worker
//                       cancel   {pid, key}                       a CancelRequest no session of the sender owns
//                       res      {id, value}                      answer to an ask
//   primary -> worker   ask      {id, op: 'snapshot'}             this worker's Snapshot
//                       ask      {id, op: 'control', cmd, who}    run a control command here
//                       ask      {id, op: 'dash-login', user, password, addr}   check a dashboard login here (role or null)
//                       ask      {id, op: 'dash-exec', sql, user}  run a dashboard action through this worker's console
//                       cancel   {pid, key}                       check the key against this worker's sessions
//                       done     {id, value}                      answer to a req
//                       reload                                   SIGHUP: re-read the config and auth files
//                       stop                                     graceful shutdown (SIGTERM to the primary)

import type { ControlCommand } from '../admin/control.ts';

export type WorkerToPrimary =
  | { t: 'req'; id: number; op: 'snapshots' }
  | { t: 'req'; id: number; op: 'control'; cmd: ControlCommand; who: string }
  | { t: 'cancel'; pid: number; key: string }
  | { t: 'res'; id: number; value: unknown };

export type PrimaryToWorker =
  | { t: 'ask'; id: number; op: 'snapshot' }
  | { t: 'ask'; id: number; op: 'control'; cmd: ControlCommand; who: string }
  | { t: 'ask'; id: number; op: 'dash-login'; user: string; password: string; addr: string }
  | { t: 'ask'; id: number; op: 'dash-exec'; sql: string; user: string }
  | { t: 'cancel'; pid: number; key: string }
  | { t: 'done'; id: number; value: unknown }
  | { t: 'reload' }
  | { t: 'stop' };

/** Environment variables the primary gives each worker. */
export const ENV = {
  index: 'POSTERN_WORKER_INDEX',
  count: 'POSTERN_WORKERS',
  mockSecret: 'POSTERN_MOCK_SECRET',
} as const;

/** A message of this protocol (other IPC traffic, such as node:cluster's own, is ignored). */
export function isMessage(m: unknown): m is { t: string } {
  return typeof m === 'object' && m !== null && typeof (m as { t?: unknown }).t === 'string';
}
