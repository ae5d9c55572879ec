// The pooled link: one logged-in client of a pool (session, transaction or
// statement mode) from its greeting to its last frame. Owns the waits for a
// server connection, the settings carried from server to server (startup
// settings checked once per pool, reported settings followed from
// ParameterStatus, others read back after a SET commits), the statement
// hook's session features (pins, forgotten statements, sequences), the
// prepared-statement rewriter, the release of the server when the client is
// between transactions, and the clean hand-back when it leaves mid-work.
//
// What the server owes is never counted here: the server connection's
// ledger (backend/expect.ts) is fed every answer and says when it is idle.
// Postern's own statements (set_config, current_setting, DISCARD SEQUENCES,
// the statement-mode ROLLBACK) go through the same ledger, their answers
// swallowed, so nothing a client sees is ever moved or lost.
//
// It knows the session shell only through LinkShell; it never sees the
// client's socket.

import { CLIENT_REQUESTS, type Ledger, type LedgerOwner, type LedgerRoute, REQ, requestOf, WHO } from '../backend/expect.ts';
import type { Pool, PoolWaiter } from '../backend/pool.ts';
import {
  type CachedStatement,
  CLOSE_COMPLETE,
  PARSE_COMPLETE,
  PREPARED_CLIENT_INSPECT,
  PREPARED_SERVER_INSPECT,
  PreparedRewriter,
  ServerStatements,
} from '../backend/prepared.ts';
import { type ServerConn, type ServerLink, UNKNOWN_VALUE } from '../backend/server-conn.ts';
import {
  bindParams,
  ClientSettings,
  EXECUTE_UNNAMED,
  firstColumn,
  gucKey,
  READ_ONLY_REPORTED,
  READ_SETTING_PARSE,
  SESSION_SETTINGS_PARSE,
  SET_CONFIG_PARSE,
  SYNC,
  settingsDiff,
  twoColumns,
  validationKey,
} from '../backend/settings.ts';
import type { PoolMode } from '../config/schema.ts';
import type { Context } from '../context.ts';
import type { Logger } from '../observability/log.ts';
import {
  decodeNotice,
  decodeParameterStatus,
  encodeError,
  encodeNotice,
  encodeParameterStatus,
  encodeReadyForQuery,
  type NoticeFields,
} from '../protocol/backend.ts';
import { BE, FE, TX, typeTable, VALID_BACKEND } from '../protocol/codes.ts';
import type { MessageStream } from '../protocol/framer.ts';
import { encodeQuery, parseText, queryText } from '../protocol/frontend.ts';
import { SQLSTATE } from '../protocol/sqlstate.ts';
import { ProtocolViolation, type ViolationKind } from '../protocol/violation.ts';
import { type Host, NEED, type Need, type WriteMark } from '../routing/hosts.ts';
import type { ParkedWaiter, PoolGroup } from '../routing/router.ts';
import { SplitScanner } from '../routing/split.ts';
import { ACCESS, type ReadOnlyClassifier } from '../sql/readonly.ts';
import type { TrafficStats } from '../stats/registry.ts';
import { serverLost } from './server-lost.ts';
import { mayBeDdl, mayHaveAnyEffect, mayUseSequences, sessionEffects } from './session-features.ts';
import type { StatementHook, StatementObserver } from './statement-hook.ts';

/** What a link may ask of the session that holds it. */
export interface LinkShell {
  readonly id: number;
  readonly ctx: Context;
  readonly database: string;
  readonly user: string;
  /** The session's logger (with the linked server's id when given). */
  logFor(server: ServerConn | null): Logger;
  /** The client's frame stream (the link sets what it inspects and counts). */
  readonly stream: MessageStream;
  readonly traffic: TrafficStats;
  /** A frame Postern made, to the client. */
  send(buf: Buffer): void;
  /** Forwarded bytes to the client; false when its socket is full (pause the server). */
  toClient(buf: Buffer, start: number, end: number): boolean;
  /** Cork (true) / uncork (false) the client socket around one server chunk; at the end, true when it still refers to queued bytes. */
  clientChunk(start: boolean): boolean;
  /** Inside a server chunk: sends what is batched for the client now. */
  flushClient(): void;
  pauseClient(): void;
  resumeClient(): void;
  /** AuthenticationOk, ParameterStatus, BackendKeyData, ReadyForQuery: the session is active. */
  greet(params: ReadonlyMap<string, string>): void;
  fatal(code: string, message: string, detail?: string, hint?: string): void;
  /** FATAL when the client's stream can take a frame (the server is between messages), else a plain close. */
  terminate(code: string, message: string): void;
  /** The session ends without a word (the client sees the socket close). */
  destroy(): void;
  /** The session ends; its client got what it needed (a FATAL already forwarded). */
  close(): void;
  internalError(e: Error): void;
  /** The statement hook: the link shows it the statement frames it reads whole, before forwarding them, and the answers. */
  readonly statements: StatementHook;
  countError(code: string | undefined): void;
  countViolation(who: 'client' | 'server', kind: string): void;
}

/** Server frames a pooled link always reads whole: release points, errors, settings, and the asynchronous ones. */
const SERVER_BASE = typeTable([BE.ReadyForQuery, BE.ErrorResponse, BE.ParameterStatus, BE.NoticeResponse, BE.NotificationResponse]);
/** Frames that end a request: read whole while an answer is not simply the client's (synthetic answers, quiet requests). */
const COMPLETIONS = [
  BE.ParseComplete,
  BE.BindComplete,
  BE.CloseComplete,
  BE.RowDescription,
  BE.NoData,
  BE.CommandComplete,
  BE.EmptyQueryResponse,
  BE.PortalSuspended,
  BE.CopyInResponse,
];
const SERVER_SPECIAL = (() => {
  const t = new Uint8Array(SERVER_BASE);
  for (const c of COMPLETIONS) t[c] = 1;
  return t;
})();
/** With the prepared-statement rewriter: what it must see whole too (statement descriptions, whose types it keeps). */
const SERVER_REWRITE = (() => {
  const t = new Uint8Array(SERVER_SPECIAL);
  for (let i = 0; i < 256; i++) if (PREPARED_SERVER_INSPECT[i] === 1) t[i] = 1;
  return t;
})();
/** Otherwise completions are only looked at, in their runs (the ledger and the statistics tracker). */
const SERVER_PEEK = typeTable(COMPLETIONS);

const CLIENT_TERMINATE = typeTable([FE.Terminate]);
/** Transaction/statement mode without the rewriter: statement texts for the statement hook. */
const CLIENT_STATEMENTS = typeTable([FE.Terminate, FE.Query, FE.Parse]);
/** With the rewriter: everything it must see whole, and statement texts. */
const CLIENT_REWRITE = (() => {
  const t = new Uint8Array(PREPARED_CLIENT_INSPECT);
  t[FE.Terminate] = 1;
  return t;
})();
/** Client frames the statistics tracker wants (shown by the link when it reads them whole). */
const CLIENT_OBSERVED = typeTable([FE.Query, FE.Parse, FE.Bind, FE.Execute, FE.Sync, FE.FunctionCall, FE.Close, FE.Describe]);
const RFQ_IDLE = encodeReadyForQuery(TX.Idle);
const DISCARD_SEQUENCES = encodeQuery('DISCARD SEQUENCES');
const ROLLBACK = encodeQuery('ROLLBACK');
/** PostgreSQL's WARNING when a module reserves the prefix of a placeholder a session had set (guc.c, MarkGUCPrefixReserved). */
const PLACEHOLDER_REMOVED = /^invalid configuration parameter name "([^"]+)", removing it$/;

/** A custom (dotted) setting name: a placeholder until a module defines it. */
function isPlaceholder(key: string): boolean {
  return key.includes('.');
}

/** The ledger key of the session-settings list in a ReadBack batch (no setting name holds a NUL). */
const SESSION_LIST = '\u0000session';

/** What one batch of Postern's own statements is for. */
const BATCH = { Apply: 0, Validate: 1, ReadBack: 2 } as const;
type BatchKind = (typeof BATCH)[keyof typeof BATCH];

/**
 * Postern's own statements about settings on one server connection:
 * set_config for each setting (each with its own Sync), or current_setting
 * for names to read back (one Sync). Their answers are swallowed; the batch
 * keeps the server's values and the first error, and updates the
 * connection's record of its settings even when the client has gone.
 */
class SettingsBatch implements LedgerOwner {
  readonly kind: BatchKind;
  readonly conn: ServerConn;
  readonly #link: PooledLink;
  /** Syncs still owed. */
  pending = 0;
  error: NoticeFields | null = null;
  /** Values the server returned, by lower-case name (null: NULL, the setting does not exist). */
  readonly values = new Map<string, string | null>();
  /** Names whose set_config or current_setting failed. */
  readonly failedNames = new Set<string>();
  /** What the connection's record said of each unreported name before this batch (restored when the server refused the change). */
  readonly before = new Map<string, string | undefined>();
  /** Names this batch resets (NULL value). */
  readonly resets = new Set<string>();
  /** ReadBack: names read for the connection's record only (an earlier client's leftovers, not this client's settings). */
  readonly connOnly = new Set<string>();
  /** ReadBack of every setting the session changed (after procedural code): name -> value; null when the list failed. */
  listed: Map<string, string> | null = null;
  /** Placeholders the server refused because their prefix is now reserved: removed from the client's settings. */
  readonly removed = new Set<string>();
  readonly #latin1: boolean;

  constructor(link: PooledLink, conn: ServerConn, kind: BatchKind) {
    this.#link = link;
    this.conn = conn;
    this.kind = kind;
    this.#latin1 = gucKey(conn.params.get('client_encoding') ?? 'UTF8') !== 'utf8';
  }

  frame(ledger: Ledger, at: number, type: number, buf: Buffer, start: number, end: number): void {
    const key = ledger.strAt(at);
    if (type === BE.DataRow && key === SESSION_LIST) {
      const row = twoColumns(buf, start, end, this.#latin1);
      if (row !== null) this.listed?.set(row[0], row[1]);
    } else if (type === BE.DataRow && key !== null) this.values.set(key, firstColumn(buf, start, end, this.#latin1));
    else if (type === BE.ErrorResponse) {
      const e = decodeNotice(buf, start, end);
      // Resetting a setting the server does not know: there is nothing to reset.
      let gone = key !== null && this.resets.has(key) && e.code === '42704';
      if (key !== null && e.code === SQLSTATE.InvalidName && isPlaceholder(key)) {
        // A placeholder (a dotted name no loaded module defined) in a prefix a
        // module has since reserved on this server: PostgreSQL removed it from
        // the session that loaded the module, and would remove it here. A
        // startup setting is still checked as at login.
        if (this.resets.has(key)) gone = true;
        else if (this.kind === BATCH.Apply) {
          gone = true;
          this.removed.add(key);
        }
      }
      if (!gone) this.error ??= e;
      if (key !== null && !gone) this.failedNames.add(key);
      if (e.severityV === 'FATAL' || e.severity === 'FATAL' || e.severityV === 'PANIC') this.#link.serverFatal(buf, start, end);
    }
  }

  settled(ledger: Ledger, at: number, ok: boolean): void {
    const key = ledger.strAt(at);
    const kind = ledger.kindAt(at);
    if (kind === REQ.Execute && key === SESSION_LIST) {
      if (ok) this.#recordListed();
      else this.listed = null;
    } else if (kind === REQ.Execute && key !== null) {
      if (ok || !this.failedNames.has(key)) this.#record(key, ok ? (this.values.get(key) ?? null) : null);
      else this.#restore(key);
    } else if (kind === REQ.Sync && --this.pending === 0) this.#link.batchDone(this);
  }

  /**
   * The session's own settings as the server listed them: the connection's
   * record is exactly that (placeholders aside, which are read one by one).
   */
  #recordListed(): void {
    const listed = this.listed as Map<string, string>;
    const custom = this.conn.custom;
    for (const key of [...custom.keys()]) if (!isPlaceholder(key) && !listed.has(key)) custom.delete(key);
    for (const [key, v] of listed) if (!this.#link.isReported(key)) custom.set(key, v);
  }

  /** The server refused the change: the setting is what it was. */
  #restore(key: string): void {
    if (this.#link.isReported(key) || !this.before.has(key)) return;
    const prev = this.before.get(key);
    if (prev === undefined) this.conn.custom.delete(key);
    else this.conn.custom.set(key, prev);
  }

  dropped(ledger: Ledger, at: number): void {
    const key = ledger.strAt(at);
    const kind = ledger.kindAt(at);
    if (kind === REQ.Execute && key !== null) {
      // Skipped by the server: nothing changed.
      this.failedNames.add(key);
      this.#restore(key);
    } else if (kind === REQ.Sync && --this.pending === 0) this.#link.batchDone(this);
  }

  /** The connection's record of an unreported setting: its value now, absent when default/undefined, unknown after a failure. */
  #record(key: string, value: string | null | undefined): void {
    if (this.#link.isReported(key)) return;
    const custom = this.conn.custom;
    if (value === undefined) custom.set(key, UNKNOWN_VALUE);
    else if (value === null) custom.delete(key);
    else custom.set(key, value);
  }
}

export class PooledLink implements PoolWaiter, ServerLink, LedgerRoute, StatementObserver {
  readonly id: number;
  readonly #shell: LinkShell;
  readonly #ctx: Context;
  /** The pools of this client's database and server user, one per server. */
  readonly group: PoolGroup;
  /** The pool of the server this client holds, or last held or waits for. */
  pool: Pool;
  /** The pool this client waits in; null when not waiting in one. */
  #waitPool: Pool | null = null;
  /** A server whose connect failed during this wait: the next choice avoids it. */
  #failedHost: Host | null = null;
  /** What the current (or awaited) server connection is for. */
  #need: Need = NEED.Any;
  /** read_write_split: the scanner of the client's statements (null: no split for this client). */
  readonly #split: SplitScanner | null;
  /** The held server serves reads proven one by one ('auto'), a READ ONLY block ('block'), or anything ('none'). */
  #readMode: 'none' | 'auto' | 'block' = 'none';
  /** read_your_writes: the client's last write, until a standby has caught up with it. */
  #mark: WriteMark | null = null;
  readonly #parker: ParkedWaiter & { since: number };
  /** Client bytes went to the server held now (read_your_writes marks only a transaction that ran something). */
  #ran = false;
  readonly mode: PoolMode;
  /** The settings this client's session should have on whichever server it lands. */
  readonly settings = new ClientSettings();
  /** The startup settings (lower-case name -> value) the client asked for. */
  readonly #startup: ReadonlyMap<string, string>;
  #server: ServerConn | null = null;
  /** What the client is waiting for a server for; null: not waiting. */
  #waitingFor: 'login' | 'txn' | null = null;
  /** performance.now() when the wait began; 0: not waiting. */
  waitSince = 0;
  /** Chunks received while no server was linked: at most what arrived before the pause. */
  #held: Buffer[] = [];
  #greeted = false;
  /** Transaction mode: named prepared statements made to work across server connections (made at the client's first message). */
  #rw: PreparedRewriter | null = null;
  readonly #rwWanted: boolean;
  /** Why this client keeps its server connection for the rest of its session (transaction mode); null: it does not. */
  pinned: string | null = null;
  /** Unreported settings a session-level SET or RESET changed in the current transaction: read back when it ends. */
  #readBack: Set<string> | null = null;
  #readBackAll = false;
  /** A DO block that may SET ran: every setting the session changed is listed and read back when the transaction ends. */
  #readBackSession = false;
  /** Reported startup settings a RESET in the current transaction may have sent to the pool's login default. */
  #resetStartup: Set<string> | null = null;
  /** The startup settings as the server spelled them (what RESET gives back in a direct session). */
  #startupValues = new Map<string, string>();
  /** The server answered a FATAL: its closing is expected. */
  #serverSaidFatal = false;
  /** The linked server's statement prepares when it was lent (server parse counting). */
  #parsesAtLend = 0;
  #closed = false;

  constructor(
    shell: LinkShell,
    group: PoolGroup,
    mode: PoolMode,
    startup: ReadonlyMap<string, string>,
    classifier: ReadOnlyClassifier | null = null,
  ) {
    this.#shell = shell;
    this.id = shell.id;
    this.#ctx = shell.ctx;
    this.group = group;
    // Until a server is chosen: the pool whose login defaults greet the client (no round-robin turn taken).
    this.pool = group.poolOf(group.hosts.primary ?? (group.hosts.hosts[0] as Host));
    this.#split =
      classifier !== null && mode === 'transaction' && group.hosts.db.read_write_split
        ? new SplitScanner(classifier, (name) => this.#rw?.textOf(name) ?? null)
        : null;
    this.#parker = {
      since: 0,
      retry: () => {
        try {
          if (this.#waitingFor !== null && !this.#closed) this.#acquire();
        } catch (e) {
          this.#shell.internalError(e as Error);
        }
      },
      giveUp: (code, message, detail) => this.onPoolError(code, message, detail),
    };
    this.mode = mode;
    this.#startup = startup;
    this.#rwWanted = mode === 'transaction' && shell.ctx.config.pool.max_prepared_statements > 0;
    shell.statements.add(this);
  }

  get server(): ServerConn | null {
    return this.#server;
  }

  /** No transaction open and nothing owed: the session could end now without cutting anything short. */
  get betweenTransactions(): boolean {
    const conn = this.#server;
    if (this.#waitingFor !== null) return false;
    return conn === null || (conn.ledger.idle && conn.ledger.txStatus === TX.Idle && this.#shell.stream.atBoundary);
  }

  get waiting(): boolean {
    return this.#waitingFor !== null;
  }

  get preparedStatements(): number {
    return this.#rw?.statementCount ?? 0;
  }

  /** The session is authenticated: greet at once when this pool already checked these startup settings, else check them on a server first. */
  start(): void {
    const cached = this.pool.welcome !== null ? this.pool.validated.get(validationKey(this.#startup)) : undefined;
    if (cached !== undefined && this.pool.welcome !== null) {
      this.#initSettings(this.pool.welcome, cached);
      this.#greet();
      return;
    }
    this.#wait('login');
  }

  isReported(key: string): boolean {
    return this.pool.reportedKeys.has(key);
  }

  /** The client's settings: the pool's defaults, then what it asked for (the server's spelling where a server gave one). */
  #initSettings(welcome: ReadonlyMap<string, string>, canonical: ReadonlyMap<string, string>): void {
    for (const [name, v] of welcome) {
      const key = gucKey(name);
      if (!READ_ONLY_REPORTED.has(key)) this.settings.set(key, v, true);
    }
    for (const [key, v] of this.#startup) {
      const value = canonical.get(key) ?? v;
      if (READ_ONLY_REPORTED.has(key)) continue;
      this.settings.set(key, value, this.isReported(key));
      this.#startupValues.set(key, value);
    }
  }

  #greet(): void {
    const welcome = this.pool.welcome ?? new Map<string, string>();
    const params = new Map<string, string>();
    for (const [name, v] of welcome) params.set(name, this.settings.reported.get(gucKey(name)) ?? v);
    this.#greeted = true;
    this.#shell.greet(params);
    const stream = this.#shell.stream;
    if (this.#rwWanted) stream.setInspect(CLIENT_REWRITE);
    else {
      stream.setInspect(this.mode === 'session' ? CLIENT_TERMINATE : CLIENT_STATEMENTS);
      stream.setCount(CLIENT_REQUESTS);
    }
  }

  // ---------------------------------------------------------------- getting a server

  #wait(why: 'login' | 'txn'): void {
    this.#waitingFor = why;
    this.waitSince = performance.now();
    this.#parker.since = Date.now();
    this.#failedHost = null;
    // A split client's first statements ride on its login server unjudged: that server is the primary.
    this.#need = why === 'txn' ? this.#needOfHeld() : this.#split !== null ? NEED.Write : NEED.Any;
    this.#acquire();
  }

  /** read_write_split: what the held chunks (the next transaction's first bytes) need. */
  #needOfHeld(): Need {
    const split = this.#split;
    this.#readMode = 'none';
    if (split === null || this.pinned !== null) return NEED.Any;
    split.reset();
    const a = split.scan(this.#held);
    if (a === ACCESS.Write) return NEED.Write;
    this.#readMode = a === ACCESS.Block ? 'block' : 'auto';
    return NEED.Read;
  }

  /** Asks the pool of the server that qualifies now; parks when none does but a check may change that. */
  #acquire(): void {
    const pool = this.group.choose(this.#need, this.#mark, this.#failedHost);
    if (pool === null) {
      if (this.group.park(this.#parker, this.#need)) return;
      const r = this.group.refusal(this.#need);
      this.#waitingFor = null;
      this.waitSince = 0;
      this.#shell.logFor(null).info({ code: r.code, detail: r.detail }, 'no usable server for the client');
      this.#shell.fatal(r.code, r.message, r.detail);
      return;
    }
    this.pool = pool;
    this.#waitPool = pool;
    const conn = pool.acquire(this);
    if (conn !== null) this.onServer(conn);
  }

  /** PoolWaiter: a server connection is lent to this client (called by the pool: an entry from outside, with its own catch). */
  onServer(conn: ServerConn): void {
    try {
      this.#onServer(conn);
    } catch (e) {
      this.#shell.internalError(e as Error);
    }
  }

  #onServer(conn: ServerConn): void {
    const why = this.#waitingFor;
    this.#waitingFor = null;
    this.#waitPool = null;
    if (this.#closed) {
      (conn.pool as Pool).release(conn, true);
      return;
    }
    this.pool = conn.pool as Pool;
    this.#ran = this.#held.length > 0;
    this.#server = conn;
    conn.owner = this.id;
    this.#parsesAtLend = conn.statements?.prepares ?? 0;
    const t = this.#shell.traffic;
    t.assignments++;
    if (this.waitSince > 0) {
      const us = (performance.now() - this.waitSince) * 1000;
      this.waitSince = 0;
      t.waitUs += us;
      t.waitHist.observe(us);
    }
    const ledger = conn.ledger;
    ledger.route = this;
    ledger.onShape = this.#reshape;
    this.#shell.statements.watch(ledger);
    conn.attach(this, this.#inspectFor(ledger), SERVER_PEEK);
    if (this.#rw !== null) {
      conn.statements ??= new ServerStatements(this.#ctx.config.pool.max_prepared_statements);
      this.#rw.scope = this.pool;
      this.#rw.attach(conn.statements, ledger);
    }
    // Postern's statements and what the client sent leave in one write.
    conn.cork();
    try {
      this.#discardSequences(conn);
      if (why === 'login') {
        if (this.pool.welcome === null) this.pool.welcome = conn.reportedSettings();
        this.#validate(conn);
      } else this.#apply(conn);
      // Valid only while nobody holds the connection: set again at release.
      conn.settingsKey = null;
      const held = this.#held;
      this.#held = [];
      if (held.length > 0 && this.#greeted) for (const chunk of held) this.#shell.stream.push(chunk);
      else this.#held = held;
    } finally {
      conn.uncork();
    }
    if (this.#greeted) this.#shell.resumeClient();
    this.#idleCheck();
  }

  /** PoolWaiter: no server will come. */
  onPoolError(code: string, message: string, detail?: string): void {
    const from = this.#waitPool;
    this.#waitPool = null;
    if (code === SQLSTATE.ConnectionFailure && from !== null && this.group.hosts.hosts.length > 1 && !this.#closed) {
      // That server did not answer: another one may (a client between transactions never notices).
      const h = this.group.connectFailed(from, detail ?? message);
      if (h !== null && h !== this.#failedHost) {
        this.#failedHost = h;
        try {
          this.#acquire();
        } catch (e) {
          this.#shell.internalError(e as Error);
        }
        return;
      }
    }
    this.#waitingFor = null;
    this.waitSince = 0;
    try {
      this.#shell.logFor(null).info({ code, message }, 'no server connection for the client');
      this.#shell.fatal(code, message, detail);
    } catch (e) {
      this.#shell.internalError(e as Error);
    }
  }

  /** What the server's frames must be read as now: whole while Postern's answers are at the head, completions whole while some answer is not simply the client's. */
  #inspectFor(ledger: Ledger): Uint8Array {
    if (ledger.swallowingHead) return VALID_BACKEND;
    return this.#rw !== null ? SERVER_REWRITE : ledger.special ? SERVER_SPECIAL : SERVER_BASE;
  }

  #reshape = (): void => {
    const conn = this.#server;
    if (conn !== null && conn.ledger.onShape === this.#reshape) conn.setInspect(this.#inspectFor(conn.ledger));
  };

  /** pool.discard_sequences: a connection that passes from another client whose statements may have used sequences forgets them first. */
  #discardSequences(conn: ServerConn): void {
    const policy = this.#ctx.config.pool.discard_sequences;
    if (this.mode === 'session' || policy === 'off') return;
    if (conn.lastClient === 0 || conn.lastClient === this.id) return;
    if (policy === 'auto' && !conn.sequencesUsed) return;
    conn.sequencesUsed = false;
    conn.ledger.push(REQ.Query, WHO.Postern, null);
    conn.write(DISCARD_SEQUENCES);
  }

  /** set_config for every change that gives conn this client's settings; answers swallowed. */
  #apply(conn: ServerConn): void {
    const changes = settingsDiff(this.settings, conn);
    if (changes.length === 0) {
      conn.settingsOf = this.settings;
      conn.settingsVersion = this.settings.version;
      return;
    }
    this.#setConfig(conn, changes, BATCH.Apply);
  }

  /** The first lend of an unchecked set of startup settings: every one is set (and so checked) by the server; the greeting waits for the answers. */
  #validate(conn: ServerConn): void {
    const changes: Array<readonly [string, string | null]> = [];
    const diff = this.#diffForValidation(conn);
    for (const c of diff) changes.push(c);
    if (changes.length === 0) {
      this.pool.validated.set(validationKey(this.#startup), new Map());
      this.#initSettings(this.pool.welcome ?? conn.reportedSettings(), new Map());
      this.#afterValidation();
      return;
    }
    this.#setConfig(conn, changes, BATCH.Validate);
  }

  /** The startup settings (all of them, to have each checked), then resets of what an earlier client left. */
  #diffForValidation(conn: ServerConn): Array<readonly [string, string | null]> {
    const out: Array<readonly [string, string | null]> = [];
    let encoding: string | null = null;
    for (const [key, v] of this.#startup) {
      if (key === 'client_encoding') encoding = v;
      else out.push([key, v]);
    }
    const welcome = this.pool.welcome ?? conn.reportedSettings();
    for (const [name, v] of welcome) {
      const key = gucKey(name);
      if (READ_ONLY_REPORTED.has(key) || this.#startup.has(key) || key === 'client_encoding') continue;
      if (conn.params.get(key) !== v) out.push([key, v]);
    }
    for (const key of conn.custom.keys()) if (!this.#startup.has(key)) out.push([key, null]);
    if (encoding !== null) out.push(['client_encoding', encoding]);
    else if (conn.params.get('client_encoding') !== (welcome.get('client_encoding') ?? conn.params.get('client_encoding')))
      out.push(['client_encoding', welcome.get('client_encoding') as string]);
    return out;
  }

  #setConfig(conn: ServerConn, changes: readonly (readonly [string, string | null])[], kind: BatchKind): void {
    const batch = new SettingsBatch(this, conn, kind);
    const ledger = conn.ledger;
    const out: Buffer[] = [SET_CONFIG_PARSE];
    ledger.push(REQ.Parse, WHO.Postern, batch);
    for (const [key, value] of changes) {
      // Recorded as unknown until the server answers (a client that leaves meanwhile leaves it to be reset).
      if (!this.isReported(key)) {
        if (!batch.before.has(key)) batch.before.set(key, conn.custom.get(key));
        conn.custom.set(key, UNKNOWN_VALUE);
      }
      if (value === null) batch.resets.add(key);
      out.push(bindParams(key, value), EXECUTE_UNNAMED, SYNC);
      ledger.push(REQ.Bind, WHO.Postern, batch, 0, 0, null, key);
      ledger.push(REQ.Execute, WHO.Postern, batch, 0, 0, null, key);
      ledger.push(REQ.Sync, WHO.Postern, batch);
      batch.pending++;
    }
    conn.write(Buffer.concat(out));
  }

  /** A settings batch is answered. */
  batchDone(batch: SettingsBatch): void {
    const conn = batch.conn;
    const mine = this.#server === conn && !this.#closed;
    switch (batch.kind) {
      case BATCH.Apply:
        if (!mine) return;
        if (batch.error !== null) {
          // A value this pool accepted before is refused now (the server's
          // configuration changed): the client's session cannot be what it asked for.
          this.#fatalFromServer(batch.error);
          return;
        }
        for (const [key, v] of batch.values) if (v !== null && !this.isReported(key)) this.settings.set(key, v, false);
        for (const key of batch.removed) this.#placeholderRemoved(key, true);
        conn.settingsOf = this.settings;
        conn.settingsVersion = this.settings.version;
        break;
      case BATCH.Validate: {
        if (!mine) return;
        if (batch.error !== null) {
          // The server's own answer, as it would have refused the startup packet.
          this.#fatalFromServer(batch.error);
          return;
        }
        const canonical = new Map<string, string>();
        for (const [key] of this.#startup) {
          const v = batch.values.get(key);
          if (v !== undefined && v !== null) canonical.set(key, v);
        }
        for (const key of this.#startup.keys())
          if (this.isReported(key) && conn.params.has(key)) canonical.set(key, conn.params.get(key) as string);
        this.#remember(canonical);
        this.#initSettings(this.pool.welcome ?? conn.reportedSettings(), canonical);
        conn.settingsOf = this.settings;
        conn.settingsVersion = this.settings.version;
        this.#afterValidation();
        break;
      }
      case BATCH.ReadBack:
        if (!mine) return;
        if (batch.error !== null || batch.failedNames.size > 0) {
          // The client's session state is not known for sure: it keeps this connection.
          this.#pin('unreadable setting');
          break;
        }
        for (const [key, v] of batch.values) {
          if (batch.connOnly.has(key)) continue;
          if (v === null) this.settings.unset(key);
          else this.settings.set(key, v, false);
        }
        if (batch.listed !== null) {
          for (const key of [...this.settings.custom.keys()]) if (!isPlaceholder(key) && !batch.listed.has(key)) this.settings.unset(key);
          for (const [key, v] of batch.listed) if (!this.isReported(key)) this.settings.set(key, v, false);
        }
        conn.settingsOf = this.settings;
        conn.settingsVersion = this.settings.version;
        break;
    }
    this.#idleCheck();
  }

  /** Remembers a checked set of startup settings for the pool (bounded). */
  #remember(canonical: Map<string, string>): void {
    const v = this.pool.validated;
    if (v.size >= 256) {
      const oldest = v.keys().next();
      if (oldest.done !== true) v.delete(oldest.value);
    }
    const copy = new Map(canonical);
    copy.delete('application_name');
    v.set(validationKey(this.#startup), copy);
  }

  #afterValidation(): void {
    this.#greet();
    if (this.#held.length > 0) this.#ran = true;
    const held = this.#held;
    this.#held = [];
    if (held.length > 0 && this.#server !== null) {
      this.#server.cork();
      for (const chunk of held) this.#shell.stream.push(chunk);
      this.#server.uncork();
    } else this.#held = held;
    this.#shell.resumeClient();
  }

  /**
   * A custom placeholder of this client is gone: an extension reserved its
   * prefix (PostgreSQL's WARNING at LOAD says so, and drops the setting).
   * `tell`: Postern found it out, so the client hears that WARNING now.
   */
  #placeholderRemoved(key: string, tell: boolean): void {
    if (!this.settings.custom.has(key)) return;
    this.settings.unset(key);
    if (!tell || !this.#greeted || this.#closed) return;
    const prefix = key.slice(0, key.indexOf('.'));
    this.#shell.send(
      encodeNotice({
        severity: 'WARNING',
        code: SQLSTATE.InvalidName,
        message: `invalid configuration parameter name "${key}", removing it`,
        detail: `"${prefix}" is now a reserved prefix.`,
      }),
    );
  }

  #fatalFromServer(e: NoticeFields): void {
    this.#shell.fatal(e.code ?? SQLSTATE.InternalError, e.message ?? 'the server refused a setting', e.detail, e.hint);
  }

  /** A FATAL from the server inside Postern's own statement: the client hears it too. */
  serverFatal(buf: Buffer, start: number, end: number): void {
    this.#serverSaidFatal = true;
    if (this.#greeted && !this.#closed) this.#shell.send(Buffer.from(buf.subarray(start, end)));
  }

  // ---------------------------------------------------------------- client side

  /** A chunk from the client (the session counted it). */
  onClientChunk(chunk: Buffer): void {
    const server = this.#server;
    if (server === null) {
      if (this.#rwWanted && this.#rw === null) this.#rw = this.#makeRewriter();
      if (!this.#greeted) {
        // Sent before the greeting (a pipelining client): kept for the server it gets.
        this.#held.push(chunk);
        this.#shell.pauseClient();
        return;
      }
      // Between transactions a Terminate alone needs no server.
      if (this.#held.length === 0 && chunk.length === 5 && chunk[0] === FE.Terminate && chunk.readInt32BE(1) === 4) {
        this.#shell.close();
        return;
      }
      if (this.#held.length === 0 && this.#answerLocally(chunk)) return;
      this.#held.push(chunk);
      if (this.#waitingFor === null) this.#wait('txn');
      // Paused while it waits. A server lent at once took the chunk, and may
      // be back in the pool already (a lone Flush or stray CopyFail owes nothing).
      if (this.#waitingFor !== null) this.#shell.pauseClient();
      return;
    }
    if (this.#readMode === 'auto' && this.#holdForPrimary(server, chunk)) return;
    this.#ran = true;
    server.cork();
    try {
      this.#shell.stream.push(chunk);
    } finally {
      server.uncork();
    }
  }

  /**
   * A standby serves this client's proven reads: a chunk that may write
   * waits for the next server choice, once this server owes nothing (its
   * head, ending a frame begun in the last chunk, goes on first).
   */
  #holdForPrimary(server: ServerConn, chunk: Buffer): boolean {
    const split = this.#split as SplitScanner;
    if (this.#held.length === 0) {
      const a = split.scan([chunk]);
      if (a !== ACCESS.Write) {
        if (a === ACCESS.Block) this.#readMode = 'block';
        return false;
      }
      const head = split.head;
      if (head > 0) {
        server.cork();
        try {
          this.#shell.stream.push(chunk.subarray(0, head));
        } finally {
          server.uncork();
        }
      }
      this.#held.push(head > 0 ? chunk.subarray(head) : chunk);
    } else this.#held.push(chunk);
    this.#shell.pauseClient();
    this.#idleCheck();
    return true;
  }

  /** Held chunks go to the server held now (it cannot be given up: a transaction is open, or the session keeps it). */
  #flushHeld(conn: ServerConn): void {
    if (this.#held.length === 0) return;
    const held = this.#held;
    this.#held = [];
    this.#readMode = 'none';
    conn.cork();
    try {
      for (const chunk of held) this.#shell.stream.push(chunk);
    } finally {
      conn.uncork();
    }
    this.#shell.resumeClient();
  }

  /**
   * Named Parses and a Sync while the client holds no server (a driver
   * preparing, such as libpq's PQprepare): answered here when a server of this
   * pool already accepted each statement, so a client that prepares while
   * every server is busy with clients it waits on cannot deadlock the pool.
   * The server-side Parse goes in front of the first Bind that needs it.
   */
  #answerLocally(chunk: Buffer): boolean {
    const rw = this.#rw;
    if (rw === null || chunk[0] !== FE.Parse) return false;
    // Whole frames only: Parses, then exactly one Sync at the end (headers
    // first: a driver's Parse, Bind, Execute, Sync is told apart without its text).
    let off = 0;
    let parses = 0;
    while (off + 5 <= chunk.length) {
      const type = chunk[off] as number;
      const len = chunk.readInt32BE(off + 1);
      if (len < 4 || off + 1 + len > chunk.length) return false;
      const next = off + 1 + len;
      if (type === FE.Sync) {
        if (next !== chunk.length || parses === 0) return false;
        break;
      }
      if (type !== FE.Parse) return false;
      parses++;
      off = next;
    }
    if (off + 5 !== chunk.length) return false;
    off = 0;
    for (let i = 0; i < parses; i++) {
      const next = off + 1 + chunk.readInt32BE(off + 1);
      const text = parseText(chunk, off, next);
      if (text === null || sessionEffects(text).pin !== null || mayBeDdl(text)) return false;
      off = next;
    }
    // Each Parse must be known; mapped one by one, undone when one is not.
    const taken: string[] = [];
    off = 0;
    const out: Buffer[] = [];
    for (let i = 0; i < parses; i++) {
      const next = off + 1 + chunk.readInt32BE(off + 1);
      if (!rw.parseLocally(chunk, off, next, this.pool)) {
        for (const name of taken) rw.forgetClient(name);
        return false;
      }
      taken.push(chunk.toString('latin1', off + 5, chunk.indexOf(0, off + 5)));
      out.push(PARSE_COMPLETE);
      off = next;
    }
    out.push(RFQ_IDLE);
    // The statement hook sees what a server would have answered.
    off = 0;
    while (off < chunk.length) {
      const next = off + 1 + chunk.readInt32BE(off + 1);
      this.#shell.statements.client(chunk[off] as number, chunk, off, next);
      off = next;
    }
    for (const b of out) this.#shell.statements.server(b[0] as number, b, 0, b.length);
    this.#shell.send(Buffer.concat(out));
    return true;
  }

  #makeRewriter(): PreparedRewriter {
    return new PreparedRewriter(this.#ctx.statements, {
      toServer: (b, st, e) => this.#toServer(b, st, e),
      toClient: (b, st, e) => this.#toClient(b, st, e),
      bound: (entry) => this.#bound(entry),
    });
  }

  /** A named statement runs on the linked server: it may use sequences there. */
  #bound(entry: CachedStatement): void {
    entry.sequences ??= mayUseSequences(entry.text);
    if (entry.sequences && this.#server !== null) this.#server.sequencesUsed = true;
  }

  /** A client request's header went by (no rewriter): the ledger queues what it will earn. */
  onClientCount(type: number): void {
    const ledger = this.#server?.ledger;
    if (ledger === undefined) return;
    if (ledger.ignores(type)) {
      ledger.ignored(type);
      return;
    }
    const kind = requestOf(type);
    if (kind >= 0) ledger.push(kind as never, WHO.Client, null);
  }

  /** A client frame the link reads whole. */
  onClientFrame(type: number, buf: Buffer, start: number, end: number): void {
    // The statement hook sees it before it goes on (the session features below are one of its observers).
    if (CLIENT_OBSERVED[type] === 1) this.#shell.statements.client(type, buf, start, end);
    const rw = this.#rw;
    if (rw !== null && PREPARED_CLIENT_INSPECT[type] === 1) {
      try {
        rw.onClientFrame(type, buf, start, end);
      } catch (e) {
        if (e instanceof ProtocolViolation) {
          this.#shell.countViolation('client', e.kind);
          this.#shell.fatal(SQLSTATE.ProtocolViolation, e.message);
          return;
        }
        throw e;
      }
    } else this.#toServer(buf, start, end);
  }

  /** StatementObserver: the session features of a Query or Parse text (transaction and statement mode). */
  onStatement(type: number, buf: Buffer, start: number, end: number): void {
    if ((type === FE.Query || type === FE.Parse) && this.mode !== 'session' && !this.#closed) this.#statementText(type, buf, start, end);
  }

  /** Client bytes in a run (frames the link does not read whole). */
  onClientRun(buf: Buffer, start: number, end: number): void {
    if (this.#rw !== null) this.#rw.onClientBytes(buf, start, end);
    else this.#toServer(buf, start, end);
  }

  onClientDrain(): void {
    this.#server?.resume();
  }

  /**
   * The statement hook's session features in a Query or Parse text
   * (transaction/statement mode), before the frame goes on: pins, settings
   * to read back once the transaction ends, statements forgotten, sequences.
   */
  #statementText(type: number, buf: Buffer, start: number, end: number): void {
    const text = type === FE.Parse ? parseText(buf, start, end) : queryText(buf, start, end);
    if (text === null || !mayHaveAnyEffect(text)) return;
    const server = this.#server;
    const scs = server?.params.get('standard_conforming_strings') !== 'off';
    if (server !== null && this.#ctx.config.pool.discard_sequences === 'auto' && !server.sequencesUsed && mayUseSequences(text, scs))
      server.sequencesUsed = true;
    if (mayBeDdl(text)) this.#ctx.statements.retireAll();
    const fx = sessionEffects(text, scs);
    if (fx === null) return;
    for (const [name, v] of fx.sets) {
      const key = gucKey(name);
      if (this.isReported(key)) {
        if (v === 'DEFAULT' && this.#startupValues.has(key)) {
          this.#resetStartup ??= new Set();
          this.#resetStartup.add(key);
        }
        continue;
      }
      this.#readBack ??= new Set();
      this.#readBack.add(key);
      // Until read back, what it is on this connection is not known.
      server?.custom.set(key, UNKNOWN_VALUE);
    }
    if (fx.opaqueSets) this.#readBackSession = true;
    if (fx.resetAll) {
      this.#readBackAll = true;
      for (const key of this.#startupValues.keys()) {
        if (!this.isReported(key)) continue;
        this.#resetStartup ??= new Set();
        this.#resetStartup.add(key);
      }
      if (server !== null) for (const k of server.custom.keys()) server.custom.set(k, UNKNOWN_VALUE);
    }
    for (const name of fx.forget) {
      this.#rw?.forgetClient(name);
      if (name === null) server?.statements?.clear();
    }
    if (fx.pin !== null) this.#pin(fx.pin);
  }

  #pin(why: string): void {
    if (this.pinned !== null || this.mode !== 'transaction') return;
    this.pinned = why;
    this.#ctx.count(this.#ctx.stats.pins, why);
    this.#shell.logFor(this.#server).info({ feature: why }, 'client pinned to its server connection for the rest of its session');
  }

  #toServer(buf: Buffer, start: number, end: number): void {
    const server = this.#server;
    if (server === null) return;
    if (!server.writeRange(buf, start, end)) this.#shell.pauseClient();
  }

  #toClient(buf: Buffer, start: number, end: number): void {
    if (!this.#shell.toClient(buf, start, end)) this.#server?.pause();
  }

  // ---------------------------------------------------------------- server side (ServerLink, LedgerRoute)

  /** LedgerRoute: a server frame that belongs to the client. */
  toClient(buf: Buffer, start: number, end: number): void {
    if (this.mode === 'statement' && buf[start] === BE.ReadyForQuery && buf[start + 5] !== TX.Idle) {
      this.#refuseBlock();
      return;
    }
    if (this.#rw !== null) this.#rw.toClient(buf, start, end);
    else this.#toClient(buf, start, end);
  }

  /**
   * Statement mode: a statement left the server inside a transaction block.
   * It is rolled back quietly, and the client gets an error in place of the
   * ReadyForQuery, as if the server had refused it.
   */
  #refuseBlock(): void {
    const conn = this.#server;
    if (conn === null) return;
    conn.ledger.push(REQ.Query, WHO.Postern, null);
    conn.write(ROLLBACK);
    this.#shell.countError(SQLSTATE.FeatureNotSupported);
    this.#shell.send(
      Buffer.concat([
        encodeError({
          severity: 'ERROR',
          code: SQLSTATE.FeatureNotSupported,
          message: 'transaction blocks are not allowed in statement pooling mode',
          hint: 'Use pool_mode transaction (or session) for this database or user.',
        }),
        RFQ_IDLE,
      ]),
    );
  }

  onServerChunk(start: boolean): boolean {
    return this.#shell.clientChunk(start);
  }

  onServerRun(buf: Buffer, start: number, end: number): void {
    this.#toClient(buf, start, end);
  }

  onServerPeek(type: number, buf: Buffer, start: number, end: number): void {
    const conn = this.#server;
    if (conn === null) return;
    if (!conn.ledger.swallowingHead) this.#shell.statements.server(type, buf, start, end);
    conn.ledger.onServerFrame(type, buf, start, end, true);
  }

  onServerMessage(type: number, buf: Buffer, start: number, end: number): void {
    const conn = this.#server;
    if (conn === null) return;
    const ledger = conn.ledger;
    const ours = ledger.swallowingHead;
    if (type === BE.ParameterStatus) this.#onParameterStatus(buf, start, end, ours);
    else if (type === BE.NoticeResponse && !ours) this.#onNotice(conn, buf, start, end);
    else if (type === BE.ErrorResponse && !ours) {
      const e = decodeNotice(buf, start, end);
      if (e.severityV === 'FATAL' || e.severityV === 'PANIC' || e.severity === 'FATAL' || e.severity === 'PANIC')
        this.#serverSaidFatal = true;
      this.#shell.countError(e.code);
    }
    if (!ours && (SERVER_PEEK[type] === 1 || type === BE.ReadyForQuery || type === BE.ErrorResponse))
      this.#shell.statements.server(type, buf, start, end);
    if (this.#rw !== null) this.#rw.onServerFrame(type, buf, start, end);
    else ledger.onServerFrame(type, buf, start, end, false);
    if (this.#server === conn && ledger.idle) this.#idleCheck();
  }

  /** The server's WARNING that loading a module removed a placeholder setting (English messages only): the client's session lost it. */
  #onNotice(conn: ServerConn, buf: Buffer, start: number, end: number): void {
    if (this.settings.custom.size === 0 && conn.custom.size === 0) return;
    const e = decodeNotice(buf, start, end);
    if (e.code !== SQLSTATE.InvalidName || e.message === undefined) return;
    const m = PLACEHOLDER_REMOVED.exec(e.message);
    if (m === null) return;
    const key = gucKey(m[1] as string);
    this.#placeholderRemoved(key, false);
    if (!this.isReported(key)) conn.custom.delete(key);
  }

  /** A reported setting changed: it is the client's from now on, and goes with it to the next server. */
  #onParameterStatus(buf: Buffer, start: number, end: number, ours: boolean): void {
    const [name, value] = decodeParameterStatus(buf, start, end);
    const key = gucKey(name);
    if (READ_ONLY_REPORTED.has(key)) return;
    const told = this.settings.reported.get(key);
    this.settings.set(key, value, true);
    // Postern's own set_config: the client was told its own spelling; the server's may differ.
    if (ours && this.#greeted && told !== undefined && told !== value) this.#shell.send(encodeParameterStatus(name, value));
  }

  onServerViolation(kind: ViolationKind, detail: string): void {
    const conn = this.#server;
    this.#server = null;
    this.#rw?.reset();
    this.#shell.countViolation('server', kind);
    this.#shell.logFor(conn).warn({ kind, detail, database: this.#shell.database }, 'protocol violation by server');
    this.#shell.fatal(SQLSTATE.ProtocolViolation, `server sent an invalid message: ${detail}`);
  }

  onServerError(err: Error): void {
    this.#server = null;
    this.#rw?.reset();
    this.#shell.internalError(err);
  }

  onServerClosed(conn: ServerConn): void {
    if (this.#server !== conn) return;
    this.#server = null;
    this.#rw?.reset();
    serverLost(this.#shell, conn, this.#shell.database, this.#serverSaidFatal);
  }

  onServerDrain(): void {
    this.#shell.resumeClient();
  }

  // ---------------------------------------------------------------- release

  /**
   * The server owes nothing: at the end of a transaction, settings a SET
   * changed are read back, then (transaction/statement mode, not pinned,
   * the client between messages) the server goes back to its pool. The one
   * release rule.
   */
  #idleCheck(): void {
    const conn = this.#server;
    if (conn === null || this.#closed) return;
    const ledger = conn.ledger;
    if (!ledger.idle || !this.#greeted) return;
    if (ledger.txStatus !== TX.Idle) {
      if (this.#held.length > 0 && (this.#rw === null || this.#rw.idle)) this.#flushHeld(conn);
      return;
    }
    if (this.#rw !== null && !this.#rw.idle) return;
    if (this.#resetStartup !== null && this.#restoreStartup(conn)) return;
    if ((this.#readBack !== null || this.#readBackAll || this.#readBackSession) && this.pinned === null) {
      this.#pushReadBack(conn);
      return;
    }
    if (this.mode === 'session' || this.pinned !== null) {
      this.#flushHeld(conn);
      return;
    }
    if (!this.#shell.stream.atBoundary) return;
    this.#release(true);
    if (this.#held.length > 0 && !this.#closed && this.#waitingFor === null) {
      // Chunks held for another server (read_write_split): the next transaction starts with them.
      this.#wait('txn');
      if (this.#waitingFor !== null) this.#shell.pauseClient();
    }
  }

  /**
   * RESET of a setting the client gave at startup: a direct session resets
   * it to the startup value, a pooled connection to the pool's login
   * default. When the transaction ended with that default in force (a
   * rollback that undid the RESET leaves another value), the startup value
   * is set again. Returns true when a batch was sent.
   */
  #restoreStartup(conn: ServerConn): boolean {
    const keys = this.#resetStartup as Set<string>;
    this.#resetStartup = null;
    const defaults = new Map<string, string>();
    for (const [name, v] of this.pool.welcome ?? []) defaults.set(gucKey(name), v);
    const changes: Array<readonly [string, string]> = [];
    for (const key of keys) {
      const want = this.#startupValues.get(key);
      const now = this.settings.reported.get(key);
      if (want !== undefined && now !== want && now === defaults.get(key)) changes.push([key, want]);
    }
    if (changes.length === 0) return false;
    this.#setConfig(conn, changes, BATCH.Apply);
    return true;
  }

  #pushReadBack(conn: ServerConn): void {
    const names = this.#readBack ?? new Set<string>();
    const session = this.#readBackSession;
    // Names only the connection's record holds (an earlier client's, reset for this one): read back for that record, never taken as this client's.
    const connOnly = new Set<string>();
    if (this.#readBackAll) {
      for (const k of this.settings.custom.keys()) names.add(k);
      for (const k of conn.custom.keys()) if (!names.has(k)) connOnly.add(k);
    }
    if (session) {
      // The list covers every built-in setting; placeholders are read by name.
      for (const k of this.settings.custom.keys()) if (isPlaceholder(k)) names.add(k);
      for (const k of conn.custom.keys()) if (isPlaceholder(k) && !names.has(k)) connOnly.add(k);
      for (const k of names) if (!isPlaceholder(k)) names.delete(k);
      for (const k of connOnly) if (!isPlaceholder(k)) connOnly.delete(k);
    }
    for (const k of connOnly) names.add(k);
    this.#readBack = null;
    this.#readBackAll = false;
    this.#readBackSession = false;
    if (names.size === 0 && !session) {
      this.#idleCheck();
      return;
    }
    const batch = new SettingsBatch(this, conn, BATCH.ReadBack);
    for (const k of connOnly) batch.connOnly.add(k);
    const ledger = conn.ledger;
    const out: Buffer[] = [];
    if (session) {
      batch.listed = new Map();
      out.push(SESSION_SETTINGS_PARSE, bindParams(), EXECUTE_UNNAMED);
      ledger.push(REQ.Parse, WHO.Postern, batch);
      ledger.push(REQ.Bind, WHO.Postern, batch, 0, 0, null, SESSION_LIST);
      ledger.push(REQ.Execute, WHO.Postern, batch, 0, 0, null, SESSION_LIST);
    }
    if (names.size > 0) {
      out.push(READ_SETTING_PARSE);
      ledger.push(REQ.Parse, WHO.Postern, batch);
    }
    for (const key of names) {
      out.push(bindParams(key), EXECUTE_UNNAMED);
      ledger.push(REQ.Bind, WHO.Postern, batch, 0, 0, null, key);
      ledger.push(REQ.Execute, WHO.Postern, batch, 0, 0, null, key);
    }
    out.push(SYNC);
    ledger.push(REQ.Sync, WHO.Postern, batch);
    batch.pending = 1;
    conn.write(Buffer.concat(out));
  }

  /** Gives the linked server back to its pool (nothing owed). */
  #release(reusable: boolean): void {
    const conn = this.#server;
    if (conn === null) return;
    this.#server = null;
    this.#countServerParses(conn);
    this.#rw?.detach();
    conn.ledger.onShape = null;
    conn.ledger.watcher = null;
    conn.lastClient = this.id;
    if (conn.settingsOf === this.settings && conn.settingsVersion !== this.settings.version) conn.settingsOf = null;
    // The connection's session has exactly this client's settings (no value left unknown): the next client with the same ones needs no comparison.
    conn.settingsKey = conn.settingsOf === this.settings ? this.settings.key : null;
    for (const v of conn.custom.values())
      if (v === UNKNOWN_VALUE) {
        conn.settingsOf = null;
        conn.settingsKey = null;
        break;
      }
    // The client's answer leaves before the connection serves the next client (whose query the pool writes at once).
    this.#shell.flushClient();
    if (this.#split !== null && this.#need !== NEED.Read && this.#ran && this.group.hosts.db.read_your_writes)
      this.#mark = { wroteAt: Date.now(), lsn: null };
    this.#readMode = 'none';
    this.pool.release(conn, reusable);
    // The server's 'drain' will not reach this session any more: a client
    // paused by that server's backpressure reads again now.
    if (this.#waitingFor === null) this.#shell.resumeClient();
  }

  /** Parses Postern sent on this connection while this client held it (SHOW STATS total_server_parse_count). */
  #countServerParses(conn: ServerConn): void {
    const now = conn.statements?.prepares ?? 0;
    if (now > this.#parsesAtLend) this.#shell.traffic.serverParses += now - this.#parsesAtLend;
    this.#parsesAtLend = now;
  }

  /**
   * The session ends. A clean server goes back to the pool; one still owing
   * answers or inside a transaction is cleaned by the pool (cancel, drain,
   * roll back) and lent again; a pinned one, or one the client's cut-off
   * frame reached half, is closed.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#waitingFor !== null) {
      this.#waitPool?.removeWaiter(this);
      this.group.unpark(this.#parker);
    }
    this.#waitingFor = null;
    const conn = this.#server;
    if (conn !== null) {
      const ledger = conn.ledger;
      const clientCut = !this.#shell.stream.atBoundary;
      if (this.pinned !== null || clientCut) {
        this.#server = null;
        this.#countServerParses(conn);
        this.#rw?.reset();
        conn.ledger.onShape = null;
        this.pool.release(conn, false);
      } else if (ledger.idle && ledger.txStatus === TX.Idle && (this.#rw === null || this.#rw.idle)) {
        this.#release(true);
      } else {
        this.#server = null;
        this.#countServerParses(conn);
        ledger.onShape = null;
        const busy = ledger.owes;
        if (this.#rw !== null) this.#rw.disown();
        conn.lastClient = this.id;
        this.pool.reclaim(conn, busy, this.#shell.logFor(conn));
      }
    }
    this.#rw?.dispose();
    this.#held = [];
  }

  /** Forward a cancel to whichever server runs this client's query now. */
  cancel(): void {
    this.#server?.sendCancel(this.#shell.logFor(this.#server));
  }

  /** Janitor: client_idle_timeout (the client's turn, nothing open) and idle_transaction_timeout (inside a transaction). */
  tick(idleMs: number): void {
    const cfg = this.#ctx.config.pool;
    const conn = this.#server;
    const midMessage = !this.#shell.stream.atBoundary;
    const serverWaits = conn === null || !conn.ledger.owes;
    // An open extended query (no Sync yet) holds the server inside a transaction too.
    const inTransaction = conn !== null && serverWaits && !midMessage && (conn.ledger.txStatus !== TX.Idle || conn.ledger.unsynced);
    if (inTransaction && cfg.idle_transaction_timeout > 0 && idleMs > cfg.idle_transaction_timeout) {
      this.#shell.logFor(conn).info({ idleMs }, 'idle_transaction_timeout');
      this.#shell.terminate(SQLSTATE.IdleInTransactionSessionTimeout, 'terminating connection due to idle-in-transaction timeout');
    } else if (!inTransaction && (serverWaits || midMessage) && cfg.client_idle_timeout > 0 && idleMs > cfg.client_idle_timeout) {
      // Also a client that stopped in the middle of a message: the server waits for the rest.
      this.#shell.logFor(conn).info({ idleMs }, 'client_idle_timeout');
      this.#shell.terminate(SQLSTATE.IdleSessionTimeout, 'terminating connection due to idle-session timeout');
    }
  }
}

export { CLOSE_COMPLETE };
