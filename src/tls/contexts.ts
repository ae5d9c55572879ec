// TLS material for both sides: the client-facing tls.Server used to upgrade
// accepted sockets (after SSLRequest or for direct TLS), and per-database
// options for Postern's own connections to servers.

import { readFileSync } from 'node:fs';
import tls from 'node:tls';
import type { Config, DatabaseConfig } from '../config/schema.ts';

/** ALPN protocol name PostgreSQL 17 registered for direct TLS. */
export const ALPN_POSTGRESQL = 'postgresql';

export function clientTlsConfigured(config: Config): boolean {
  return config.tls.mode !== 'disable' && config.tls.cert !== undefined && config.tls.key !== undefined;
}

/**
 * A tls.Server that never listens: accepted sockets are handed to it with
 * `emit('connection', socket)`, so client certificates, ALPN and the
 * handshake timeout behave exactly as for a listening server.
 */
export function createClientTlsServer(config: Config): tls.Server {
  const t = config.tls;
  const verify = t.mode === 'verify-ca' || t.mode === 'verify-full';
  const opts: tls.TlsOptions = {
    cert: readFileSync(t.cert as string),
    key: readFileSync(t.key as string),
    minVersion: t.min_version,
    ALPNProtocols: [ALPN_POSTGRESQL],
    handshakeTimeout: config.limits.client_login_timeout,
    // Certificates are checked after the handshake so the client gets a
    // Postgres error (28000) instead of a bare TLS alert.
    // Ask for a certificate whenever there is a CA to check it against: hba
    // `cert` lines and `clientcert=` need it even under tls.mode allow.
    requestCert: verify || t.ca !== undefined,
    rejectUnauthorized: false,
  };
  if (t.ca !== undefined) opts.ca = readFileSync(t.ca);
  if (t.ciphers !== undefined) opts.ciphers = t.ciphers;
  return tls.createServer(opts);
}

export interface ServerTlsOptions {
  mode: DatabaseConfig['tls']['mode'];
  connect: tls.ConnectionOptions;
}

/** Options for tls.connect() to a database's server; read once per config load. */
export function serverTlsOptions(db: DatabaseConfig): ServerTlsOptions {
  const t = db.tls;
  const servername = t.server_name ?? db.host;
  const connect: tls.ConnectionOptions = {
    minVersion: 'TLSv1.2',
    rejectUnauthorized: t.mode === 'verify-ca' || t.mode === 'verify-full',
  };
  // SNI must be a host name, never an IP literal (RFC 6066).
  if (servername !== '' && !isIpLiteral(servername)) connect.servername = servername;
  if (t.ca !== undefined) connect.ca = readFileSync(t.ca);
  if (t.cert !== undefined) connect.cert = readFileSync(t.cert);
  if (t.key !== undefined) connect.key = readFileSync(t.key);
  if (t.mode === 'verify-ca') {
    // Chain checked by rejectUnauthorized; host name deliberately not.
    connect.checkServerIdentity = () => undefined;
  } else if (t.mode === 'verify-full') {
    connect.checkServerIdentity = (_host, cert) => tls.checkServerIdentity(servername, cert);
  }
  return { mode: t.mode, connect };
}

function isIpLiteral(s: string): boolean {
  return /^[\d.]+$/.test(s) || s.includes(':');
}
