// State shared by every session of one Postern instance: the loaded config,
// loggers, TLS servers, the cancel-key registry and the live session set.
// Side channels (metrics, admin) read these same objects.

import { randomBytes, randomInt } from 'node:crypto';
import type tls from 'node:tls';
import type { Config } from '../config/schema.ts';
import type { Logger } from '../observability/log.ts';
import { type ServerTlsOptions, serverTlsOptions } from '../tls/contexts.ts';

/** What a session exposes to the rest of Postern. */
export interface SessionHandle {
  readonly id: number;
  /** Postern's cancel key for this client. */
  readonly cancelKey: Buffer;
  /** Forward a cancel to whichever server currently runs this client's query. */
  cancel(): void;
  /** Ask the session to end now (shutdown), with an optional FATAL to the client. */
  terminate(code: string, message: string): void;
}

export class Context {
  config: Config;
  log: Logger;
  clientTls: tls.Server | null;
  #serverTls = new Map<string, ServerTlsOptions>();
  readonly sessions = new Set<SessionHandle>();
  readonly #byPid = new Map<number, SessionHandle>();
  #nextId = 1;
  shuttingDown = false;

  constructor(config: Config, log: Logger, clientTls: tls.Server | null) {
    this.config = config;
    this.log = log;
    this.clientTls = clientTls;
    for (const [name, db] of Object.entries(config.databases)) this.#serverTls.set(name, serverTlsOptions(db));
  }

  nextId(): number {
    return this.#nextId++;
  }

  serverTls(database: string): ServerTlsOptions | undefined {
    return this.#serverTls.get(database);
  }

  /** A fresh (pid, key) pair unique among live sessions. Key length 4 for protocol 3.0, 32 for 3.2. */
  issueCancelKey(keyLength: number): { pid: number; key: Buffer } {
    for (;;) {
      // Positive Int32 like a real backend pid; random so keys cannot be guessed in sequence.
      const pid = randomInt(1, 0x7fffffff);
      if (!this.#byPid.has(pid)) return { pid, key: randomBytes(keyLength) };
    }
  }

  register(pid: number, s: SessionHandle): void {
    this.sessions.add(s);
    this.#byPid.set(pid, s);
  }

  track(s: SessionHandle): void {
    this.sessions.add(s);
  }

  unregister(pid: number | null, s: SessionHandle): void {
    this.sessions.delete(s);
    if (pid !== null && this.#byPid.get(pid) === s) this.#byPid.delete(pid);
  }

  byPid(pid: number): SessionHandle | undefined {
    return this.#byPid.get(pid);
  }
}
