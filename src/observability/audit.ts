// The audit trail (audit.file): JSON lines, one per session and, when
// audit.statements is on, one per executed statement shape. Records are built
// by their producers from names, addresses, counters and normalized texts
// only: no password, key or literal value ever reaches this file.

import { pino } from 'pino';
import type { StatementRecord } from '../stats/registry.ts';

/** A statement as logs and the audit trail show it: names, the normalized text, numbers; never a literal. */
export function statementFields(r: StatementRecord): Record<string, unknown> {
  return {
    client: r.client,
    database: r.database,
    user: r.user,
    application_name: r.application,
    fingerprint: r.shape.fingerprint,
    query: r.shape.normalized,
    duration_us: Math.round(r.durationUs),
    rows: r.rows,
    sqlstate: r.sqlstate,
  };
}

export class AuditLog {
  readonly #dest: ReturnType<typeof pino.destination>;
  statements: boolean;

  constructor(file: string, statements: boolean) {
    const dest = pino.destination({ dest: file === 'stdout' ? 1 : file, sync: false, mkdir: true });
    // pino's asynchronous file writer (sonic-boom); records are plain JSON
    // lines with their own time, not log lines (no level, pid or host).
    this.#dest = dest;
    this.statements = statements;
  }

  /** One record per client session, written when it ends (also for a failed login). */
  session(record: Record<string, unknown>): void {
    this.#write({ kind: 'session', ...record });
  }

  /** One record per executed statement (audit.statements). */
  statement(r: StatementRecord): void {
    if (!this.statements) return;
    this.#write({ kind: 'statement', ...statementFields(r) });
  }

  #write(record: Record<string, unknown>): void {
    this.#dest.write(`${JSON.stringify({ time: new Date().toISOString(), ...record })}\n`);
  }

  close(): void {
    try {
      this.#dest.flushSync();
    } catch {
      // Not ready yet (nothing written): nothing to flush.
    }
    this.#dest.end();
  }
}
