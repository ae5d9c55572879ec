// Where a user's stored secret comes from: the users file first, then an
// auth_query lookup on the server (a short-lived connection as
// auth.query_user, answers cached for auth.cache_ttl). Used by the login room
// and by the dashboard's HTTP basic auth, so both check the same secrets.

import { classifySecret, type StoredSecret } from '../auth/secrets.ts';
import { ServerConn, type ServerSecret } from '../backend/server-conn.ts';
import type { Context } from '../context.ts';
import type { Logger } from '../observability/log.ts';
import { routingOf } from './router.ts';

/** A failed auth_query lookup (server down, lookup role refused): not the same as an unknown user. */
export const LOOKUP_FAILED = Symbol('lookup failed');

/** The user's stored secret: users file first, then auth_query (cached). null: unknown user; LOOKUP_FAILED: the lookup itself failed. */
export async function lookupSecret(
  ctx: Context,
  user: string,
  database: string,
  log: Logger,
): Promise<StoredSecret | null | typeof LOOKUP_FAILED> {
  const fromFile = ctx.auth.users.get(user);
  if (fromFile !== undefined) return fromFile;
  const a = ctx.config.auth;
  if (a.query_user === undefined) return null;
  const key = `${user}@${database}`;
  const cached = ctx.lookupCache.get(key);
  if (cached !== undefined && cached.expires > Date.now()) return cached.secret;
  const dbName = a.query_database ?? database;
  const target = routingOf(ctx).targetFor(dbName);
  if (target === null) return null;
  const conn = new ServerConn(target, a.query_user, log);
  try {
    const secret: ServerSecret = a.query_password !== undefined ? { password: a.query_password } : {};
    // DateStyle ISO: valid_until must parse whatever the role's or database's DateStyle is.
    await conn.login(
      secret,
      [
        ['application_name', 'postern auth_query'],
        ['DateStyle', 'ISO'],
      ],
      ctx.config.limits.max_message_size,
    );
    const rows = await conn.query(a.query, [user]);
    const row = rows[0];
    let found: StoredSecret | null = null;
    if (row !== undefined && typeof row[1] === 'string') {
      const validUntil = row[2] ?? null;
      // rolvaliduntil in the past: the password has expired; Postgres refuses the login.
      // Fails closed: '-infinity' and anything unparsable count as expired.
      const expired = validUntil !== null && validUntil !== 'infinity' && !(Date.parse(validUntil) >= Date.now());
      found = expired ? null : classifySecret(row[1]);
    }
    ctx.lookupCache.set(key, { secret: found, expires: Date.now() + a.cache_ttl });
    return found;
  } catch (e) {
    log.warn({ err: (e as Error).message, database: dbName }, 'auth_query failed');
    return LOOKUP_FAILED;
  } finally {
    conn.close();
  }
}
