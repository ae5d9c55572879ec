// TLS material for both sides: the client-facing upgrade of accepted sockets
// (after SSLRequest or for direct TLS), and per-database options for
// Postern's own connections to servers.

import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type net from 'node:net';
import tls from 'node:tls';
import type { Config, DatabaseConfig } from '../config/schema.ts';

/** ALPN protocol name PostgreSQL 17 registered for direct TLS. */
export const ALPN_POSTGRESQL = 'postgresql';

export function clientTlsConfigured(config: Config): boolean {
  return config.tls.mode !== 'disable' && config.tls.cert !== undefined && config.tls.key !== undefined;
}

/** What a client-side TLS upgrade reports, once. */
export interface UpgradeHandlers {
  /** The handshake completed on this socket. */
  secure(sock: tls.TLSSocket): void;
  /** It failed (bad ClientHello, no common protocol or ALPN, reset): the caller closes quietly. */
  failed(err: Error): void;
}

/**
 * TLS toward clients: the options read once from the config, and the
 * upgrade of an accepted socket after SSLRequest (or for direct TLS). The
 * upgrade goes through a tls.Server that never listens (the socket is handed
 * to it with emit('connection')), because Node evaluates a client
 * certificate (`authorized`) only for sockets its tls.Server makes; ALPN,
 * requestCert and the handshake timeout then behave as on a listening TLS
 * server. The server reports the TLS socket by event; it is matched to its
 * upgrade by the connection's remote address and port, which identify one
 * live connection on Postern's listening socket (public properties only).
 */
export class ClientTls {
  readonly #server: tls.Server;
  /** Upgrades whose handshake has not ended, by "address|port" of the client. */
  readonly #pending = new Map<string, UpgradeHandlers>();
  /** DER of the certificate presented (the leaf of the chain file): SCRAM channel binding. */
  readonly certificate: Buffer;

  constructor(config: Config) {
    const t = config.tls;
    const verify = t.mode === 'verify-ca' || t.mode === 'verify-full';
    const cert = readFileSync(t.cert as string);
    const opts: tls.TlsOptions = {
      cert,
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
    this.#server = tls.createServer(opts);
    this.#server.on('secureConnection', (sock: tls.TLSSocket) => this.#take(sock)?.secure(sock));
    this.#server.on('tlsClientError', (err: Error, sock: tls.TLSSocket) => {
      const h = this.#take(sock);
      sock.destroy();
      h?.failed(err);
    });
    // X509Certificate reads the first certificate of a chain file: the leaf clients see.
    this.certificate = new X509Certificate(cert).raw;
  }

  #key(sock: net.Socket): string {
    return `${sock.remoteAddress ?? ''}|${sock.remotePort ?? 0}`;
  }

  #take(sock: net.Socket): UpgradeHandlers | undefined {
    const k = this.#key(sock);
    const h = this.#pending.get(k);
    if (h === undefined) sock.destroy();
    else this.#pending.delete(k);
    return h;
  }

  /**
   * Starts the handshake on `raw` (paused, no data listener). `pending`:
   * bytes already read that belong to the handshake (a direct-TLS ClientHello);
   * they are put back first. Exactly one handler is called, unless the
   * connection closes first.
   */
  upgrade(raw: net.Socket, pending: Buffer | null, h: UpgradeHandlers): void {
    const k = this.#key(raw);
    this.#pending.set(k, h);
    raw.once('close', () => {
      if (this.#pending.get(k) === h) this.#pending.delete(k);
    });
    if (pending !== null) raw.unshift(pending);
    this.#server.emit('connection', raw);
  }
}

export interface ServerTlsOptions {
  mode: DatabaseConfig['tls']['mode'];
  connect: tls.ConnectionOptions;
}

/** Options for tls.connect() to a database's server; read once per config load. */
export function serverTlsOptions(db: DatabaseConfig, host: string = db.host): ServerTlsOptions {
  const t = db.tls;
  const servername = t.server_name ?? host;
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
