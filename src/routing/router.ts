// The router: from what a client asked for (database, user; later the TLS
// server name's tenant and the statement's class) to where its sessions go:
// the server target, the server user and credentials, the pool mode and
// size, and the pool itself. Today one host per database; routing to
// several servers, tenants and passthrough plug in here and nowhere else.

import type { StoredSecret } from '../auth/secrets.ts';
import type { Pool } from '../backend/pool.ts';
import type { ServerSecret, ServerTarget } from '../backend/server-conn.ts';
import type { DatabaseConfig, PoolMode } from '../config/schema.ts';
import type { Context } from '../context.ts';

export interface Route {
  /** The database name the client asked for (a config key). */
  database: string;
  db: DatabaseConfig;
  target: ServerTarget;
  /** The role Postern logs into the server as. */
  serverUser: string;
  mode: PoolMode;
  /** This process's share of the pool size. */
  poolSize: number;
  /** A password from the config for the server user (users.*.server_password or databases.*.server_password). */
  password?: string;
}

/** Where a client of `database` as `user` goes; null when no such database is configured. */
export function route(ctx: Context, database: string, user: string): Route | null {
  const cfg = ctx.config;
  const db = cfg.databases[database];
  const target = ctx.target(database);
  if (db === undefined || target === undefined) return null;
  const mapping = cfg.users[user];
  const serverUser = mapping?.server_user ?? db.server_user ?? user;
  const r: Route = {
    database,
    db,
    target,
    serverUser,
    mode: mapping?.pool_mode ?? db.pool_mode ?? cfg.pool.pool_mode,
    poolSize: ctx.share(db.pool_size ?? cfg.pool.default_pool_size),
  };
  // A mapped server user takes only its own password; otherwise the user's, then the database's.
  const pw = mapping?.server_user !== undefined ? mapping.server_password : (mapping?.server_password ?? db.server_password);
  if (pw !== undefined) r.password = pw;
  return r;
}

/** What a client proved at login, usable to log into the server as the same user. */
export interface LoginCredentials {
  password?: string;
  scramKeys?: { clientKey: Buffer; serverKey: Buffer };
  /** The secret the client was checked against (users file or auth_query). */
  stored?: StoredSecret | null;
}

/**
 * The credentials for the server login: the configured password, or (the
 * server user being the client's own) what the client proved: its password,
 * the SCRAM keys recovered from its proof, or a stored MD5 hash that answers
 * the server's MD5 challenge.
 */
export function serverSecret(r: Route, user: string, creds: LoginCredentials): ServerSecret {
  const secret: ServerSecret = {};
  if (r.password !== undefined) secret.password = r.password;
  else if (r.serverUser === user) {
    if (creds.password !== undefined) secret.password = creds.password;
    if (creds.scramKeys !== undefined) secret.scramKeys = creds.scramKeys;
    if (creds.stored?.kind === 'md5') secret.md5 = creds.stored.hash;
  }
  return secret;
}

/** The pool of a route; the newest usable credentials open its next connections. */
export function poolFor(ctx: Context, r: Route, secret: ServerSecret): Pool {
  const pool = ctx.pools.get(r.target, r.serverUser, r.mode, r.poolSize);
  if (secret.password !== undefined || secret.scramKeys !== undefined || secret.md5 !== undefined) pool.secret = secret;
  return pool;
}
