// What a statement does to session state, for transaction pooling: which
// session features it uses and the declared behaviour for each
// (docs/transaction-mode.md). Pure and cached by statement text, so the
// classifier runs once per distinct text.
//
//   emulated: session-level SET / RESET of settings the server does not report
//             (re-applied on every server connection the client lands on);
//             DEALLOCATE / DISCARD ALL (the client's protocol-level statements
//             are forgotten).
//   pinned:   LISTEN, SQL-level PREPARE, session advisory locks, temporary
//             tables, WITH HOLD cursors, SET ROLE / SESSION AUTHORIZATION,
//             SET SESSION CHARACTERISTICS, set_config(..., false), LOAD:
//             the client keeps its server connection for the rest of its session.

import { classify } from '../sql/classify.ts';

export interface SessionEffects {
  /** Why the client must stay on its server connection from now on; null when it need not. */
  readonly pin: string | null;
  /** Session-level settings to carry to other servers: [name, SQL value text], 'DEFAULT' for RESET. */
  readonly sets: ReadonlyArray<readonly [string, string]>;
  /** RESET ALL or DISCARD ALL ran: every carried setting is back to its default. */
  readonly resetAll: boolean;
  /** Protocol-level statements to forget: a name, or null for all (DEALLOCATE ALL, DISCARD ALL). */
  readonly forget: ReadonlyArray<string | null>;
}

export const NONE: SessionEffects = Object.freeze({ pin: null, sets: [], resetAll: false, forget: [] });
const CACHE_MAX = 10_000;
const cache = new Map<string, SessionEffects>();

/**
 * Words of which at least one must appear, in any case, somewhere in a text
 * that has a session effect: every statement kind above starts with or
 * contains one (SET/RESET/set_config all hold "set"; temporary tables "temp",
 * also as pg_temp; WITH HOLD cursors "declare"; advisory lock functions
 * "advisory"), and '&' starts the only spelling of an identifier that
 * hides its letters (U&"\0073et"). A text with none of them is inert without
 * being lexed: most application statements (pgbench's SELECT, INSERT ...
 * with a new literal each time) skip the classifier and its cache.
 * This is only a shortcut to "no effect": everything else goes to the
 * exact classifier (test/unit/sql.test.ts checks the two agree).
 */
const TRIGGERS = /set|temp|prepare|listen|declare|load|deallocate|discard|advisory|&/i;

/** True when sql might have a session effect (see TRIGGERS); false means it certainly has none. */
export function mayHaveSessionEffects(sql: string): boolean {
  return TRIGGERS.test(sql);
}

/** Effects of one simple Query or Parse text. */
export function sessionEffects(sql: string, standardConformingStrings = true): SessionEffects {
  if (!TRIGGERS.test(sql)) return NONE;
  const key = standardConformingStrings ? sql : `\u0000${sql}`;
  const hit = cache.get(key);
  if (hit !== undefined) return hit;
  const e = compute(sql, standardConformingStrings);
  if (cache.size >= CACHE_MAX) cache.clear();
  cache.set(key, e);
  return e;
}

/** The classifier's answer, without the TRIGGERS shortcut or the cache (tests compare the two). */
export function compute(sql: string, scs: boolean): SessionEffects {
  let pin: string | null = null;
  const sets: Array<readonly [string, string]> = [];
  const forget: Array<string | null> = [];
  let resetAll = false;
  for (const st of classify(sql, { standardConformingStrings: scs })) {
    if (st.sessionAdvisoryLock) pin ??= 'session advisory lock';
    if (st.setConfigSession || st.setConfigUndetermined) pin ??= 'set_config(..., false)';
    switch (st.kind) {
      case 'set':
        if (!st.local) sets.push([st.name, /^default$/i.test(st.value.trim()) ? 'DEFAULT' : st.value]);
        break;
      case 'reset':
        if (st.name === 'all') resetAll = true;
        else sets.push([st.name, 'DEFAULT']);
        break;
      case 'set_role':
        if (!st.local) pin ??= 'SET ROLE';
        break;
      case 'set_session_authorization':
        if (!st.local) pin ??= 'SET SESSION AUTHORIZATION';
        break;
      case 'set_session_characteristics':
        pin ??= 'SET SESSION CHARACTERISTICS';
        break;
      case 'prepare':
        pin ??= 'PREPARE';
        break;
      case 'listen':
        pin ??= 'LISTEN';
        break;
      case 'create_temp':
        if (!st.onCommitDrop) pin ??= 'temporary table';
        break;
      case 'declare_cursor':
        if (st.withHold) pin ??= 'WITH HOLD cursor';
        break;
      case 'load':
        pin ??= 'LOAD';
        break;
      case 'deallocate':
        forget.push(st.name);
        break;
      case 'discard':
        if (st.what === 'all') {
          forget.push(null);
          resetAll = true;
        }
        break;
      default:
        break;
    }
  }
  if (pin === null && sets.length === 0 && !resetAll && forget.length === 0) return NONE;
  return { pin, sets, resetAll, forget };
}
