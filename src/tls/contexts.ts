// TLS material for both sides: the client-facing upgrade of accepted sockets
// (after SSLRequest or for direct TLS), and per-database options for
// Postern's own connections to servers.

import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type net from 'node:net';
import tls from 'node:tls';
import type { Config, DatabaseConfig } from '../config/schema.ts';
import { PosternError } from '../errors.ts';

/** ALPN protocol name PostgreSQL 17 registered for direct TLS. */
export const ALPN_POSTGRESQL = 'postgresql';

export function clientTlsConfigured(config: Config): boolean {
  if (config.tls.mode === 'disable') return false;
  if (config.tls.cert !== undefined && config.tls.key !== undefined) return true;
  return config.tls.certificates.length > 0 || Object.values(config.tenants).some((t) => t.certificates.length > 0);
}

/** What a client-side TLS upgrade reports, once. */
export interface UpgradeHandlers {
  /** The handshake completed on this socket. */
  secure(sock: tls.TLSSocket): void;
  /** It failed (bad ClientHello, no common protocol or ALPN, reset): the caller closes quietly. */
  failed(err: Error): void;
}

/** A TLS file that does not load: the setting, and why (never the file's content). */
export interface TlsProblem {
  path: string;
  message: string;
}

/** Thrown by loadCertificates when a file does not load. */
export class TlsFilesError extends PosternError {
  readonly problems: TlsProblem[];
  constructor(problems: TlsProblem[]) {
    super(`TLS files do not load: ${problems.map((p) => `${p.path}: ${p.message}`).join('; ')}`, 'ERR_TLS_FILES');
    this.name = 'TlsFilesError';
    this.problems = problems;
  }
}

/** One certificate Postern can present: the context for the handshake, and its leaf (SCRAM channel binding). */
export interface PresentedCert {
  readonly context: tls.SecureContext;
  readonly leaf: Buffer;
}

/**
 * The certificates toward clients, by TLS server name: exact names first,
 * then `*.suffix` wildcards (one label, the longest suffix first), then the
 * default (tls.cert; null without one). Built whole from the files, so a
 * reload either gets a complete new table or none.
 */
export class CertificateTable {
  readonly #exact = new Map<string, PresentedCert>();
  /** By suffix with its dot (".example.com"), longest first. */
  readonly #wild: Array<[string, PresentedCert]> = [];
  readonly fallback: PresentedCert | null;
  /** The options of the default context (the tls.Server's own). */
  readonly defaults: tls.SecureContextOptions;

  constructor(defaults: tls.SecureContextOptions, fallback: PresentedCert | null, named: Array<[string[], PresentedCert]>) {
    this.defaults = defaults;
    this.fallback = fallback;
    for (const [names, cert] of named)
      for (const n of names) {
        const name = n.toLowerCase();
        if (name.startsWith('*.')) {
          if (!this.#wild.some(([sfx]) => sfx === name.slice(1))) this.#wild.push([name.slice(1), cert]);
        } else if (!this.#exact.has(name)) this.#exact.set(name, cert);
      }
    this.#wild.sort((a, b) => b[0].length - a[0].length);
  }

  /** The certificate for a server name (null or '' when the client sent none). */
  pick(servername: string | null | undefined): PresentedCert | null {
    if (servername === null || servername === undefined || servername === '') return this.fallback;
    const name = servername.toLowerCase();
    const exact = this.#exact.get(name);
    if (exact !== undefined) return exact;
    for (const [suffix, cert] of this.#wild) if (matchesWildcard(name, suffix)) return cert;
    return this.fallback;
  }
}

/** "*.example.com" (given as ".example.com") matches "a.example.com", not "example.com" nor "a.b.example.com". */
export function matchesWildcard(name: string, suffix: string): boolean {
  if (name.length <= suffix.length || !name.endsWith(suffix)) return false;
  return !name.slice(0, name.length - suffix.length).includes('.');
}

function readPem(path: string, setting: string, problems: TlsProblem[]): Buffer | null {
  try {
    return readFileSync(path);
  } catch (e) {
    problems.push({ path: setting, message: `cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}` });
    return null;
  }
}

/**
 * A CA file: every certificate in it must parse. OpenSSL skips a block it
 * cannot read without a word, and the chain would then fail only at the
 * first handshake.
 */
function readCa(path: string, setting: string, problems: TlsProblem[]): Buffer | null {
  const pem = readPem(path, setting, problems);
  if (pem === null) return null;
  const blocks = pem.toString('latin1').match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) {
    problems.push({ path: setting, message: `${path} holds no PEM certificate` });
    return null;
  }
  for (const block of blocks) {
    try {
      new X509Certificate(block);
    } catch (e) {
      problems.push({ path: setting, message: `a certificate in ${path} does not parse: ${tlsLoadMessage(e as Error)}` });
      return null;
    }
  }
  return pem;
}

/** Reads the client-side certificates of a config; throws TlsFilesError listing every file that does not load. */
export function loadCertificates(config: Config): CertificateTable {
  const t = config.tls;
  const problems: TlsProblem[] = [];
  const ca = t.ca !== undefined ? readCa(t.ca, 'tls.ca', problems) : null;
  const base: tls.SecureContextOptions = { minVersion: t.min_version };
  if (ca !== null) base.ca = ca;
  if (t.ciphers !== undefined) base.ciphers = t.ciphers;
  const one = (certPath: string, keyPath: string, setting: string): { cert: PresentedCert; opts: tls.SecureContextOptions } | null => {
    const cert = readPem(certPath, `${setting}.cert`, problems);
    const key = readPem(keyPath, `${setting}.key`, problems);
    if (cert === null || key === null) return null;
    const opts = { ...base, cert, key };
    try {
      // Fails on a PEM that does not parse and on a key that is not the certificate's.
      const context = tls.createSecureContext(opts);
      return { cert: { context, leaf: new X509Certificate(cert).raw }, opts };
    } catch (e) {
      problems.push({ path: setting, message: tlsLoadMessage(e as Error) });
      return null;
    }
  };
  let fallback: PresentedCert | null = null;
  let defaults: tls.SecureContextOptions = base;
  if (t.cert !== undefined && t.key !== undefined) {
    const d = one(t.cert, t.key, 'tls');
    if (d !== null) {
      fallback = d.cert;
      defaults = d.opts;
    }
  }
  const named: Array<[string[], PresentedCert]> = [];
  t.certificates.forEach((e, i) => {
    const c = one(e.cert, e.key, `tls.certificates.${i}`);
    if (c !== null) named.push([e.server_names ?? [], c.cert]);
  });
  for (const [name, tenant] of Object.entries(config.tenants))
    tenant.certificates.forEach((e, i) => {
      const c = one(e.cert, e.key, `tenants.${name}.certificates.${i}`);
      if (c !== null) named.push([e.server_names ?? tenant.server_names ?? [], c.cert]);
    });
  if (problems.length > 0) throw new TlsFilesError(problems);
  return new CertificateTable(defaults, fallback, named);
}

/** OpenSSL's reason without its error-queue noise ("key values mismatch", "no start line"). */
function tlsLoadMessage(e: Error): string {
  const m = /routines:[^:]*:([^:]+)/.exec(e.message);
  const reason = (m?.[1] ?? e.message).trim();
  return reason === 'key values mismatch' ? 'the key does not belong to the certificate (key values mismatch)' : reason;
}

/**
 * TLS toward clients: the certificate table, and the upgrade of an accepted
 * socket after SSLRequest (or for direct TLS). The upgrade goes through a
 * tls.Server that never listens (the socket is handed to it with
 * emit('connection')), because Node evaluates a client certificate
 * (`authorized`) only for sockets its tls.Server makes; ALPN, requestCert,
 * SNI and the handshake timeout then behave as on a listening TLS server.
 * The server reports the TLS socket by event; it is matched to its upgrade
 * by the connection's remote address and port, which identify one live
 * connection on Postern's listening socket (public properties only).
 */
export class ClientTls {
  readonly #server: tls.Server;
  /** Upgrades whose handshake has not ended, by "address|port" of the client. */
  readonly #pending = new Map<string, UpgradeHandlers>();
  #table: CertificateTable;

  constructor(config: Config, table: CertificateTable = loadCertificates(config)) {
    const t = config.tls;
    const verify = t.mode === 'verify-ca' || t.mode === 'verify-full';
    this.#table = table;
    const opts: tls.TlsOptions = {
      ...table.defaults,
      ALPNProtocols: [ALPN_POSTGRESQL],
      handshakeTimeout: config.limits.client_login_timeout,
      // Certificates are checked after the handshake so the client gets a
      // Postgres error (28000) instead of a bare TLS alert.
      // Ask for a certificate whenever there is a CA to check it against: hba
      // `cert` lines and `clientcert=` need it even under tls.mode allow.
      requestCert: verify || t.ca !== undefined,
      rejectUnauthorized: false,
      SNICallback: (name, cb) => cb(null, this.#table.pick(name)?.context),
    };
    this.#server = tls.createServer(opts);
    this.#server.on('secureConnection', (sock: tls.TLSSocket) => this.#take(sock)?.secure(sock));
    this.#server.on('tlsClientError', (err: Error, sock: tls.TLSSocket) => {
      const h = this.#take(sock);
      sock.destroy();
      h?.failed(err);
    });
  }

  /** The certificates in use now. */
  get table(): CertificateTable {
    return this.#table;
  }

  /**
   * New certificates for the handshakes from now on (SIGHUP, RELOAD, tls.watch);
   * sessions already on TLS keep theirs.
   */
  replace(table: CertificateTable): void {
    this.#table = table;
    this.#server.setSecureContext(table.defaults);
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

/** The leaf certificate a TLS socket presented to its client (SCRAM's tls-server-end-point); null when none. */
export function presentedLeaf(sock: tls.TLSSocket): Buffer | null {
  const c = sock.getCertificate();
  return c !== null && 'raw' in c && Buffer.isBuffer(c.raw) ? c.raw : null;
}

export interface ServerTlsOptions {
  mode: DatabaseConfig['tls']['mode'];
  /** TLS first, no SSLRequest (PostgreSQL 17 direct TLS, ALPN postgresql). */
  direct: boolean;
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
  if (t.direct) connect.ALPNProtocols = [ALPN_POSTGRESQL];
  if (t.mode === 'verify-ca') {
    // Chain checked by rejectUnauthorized; host name deliberately not.
    connect.checkServerIdentity = () => undefined;
  } else if (t.mode === 'verify-full') {
    connect.checkServerIdentity = (_host, cert) => tls.checkServerIdentity(servername, cert);
  }
  return { mode: t.mode, direct: t.direct, connect };
}

/**
 * The server-side TLS files of a database, checked the way a handshake would
 * load them (a key that is not its certificate's, a CA that does not parse);
 * the problems, empty when they load.
 */
export function checkServerTls(db: DatabaseConfig, path: string): TlsProblem[] {
  const t = db.tls;
  if (t.ca === undefined && t.cert === undefined) return [];
  const problems: TlsProblem[] = [];
  const opts: tls.SecureContextOptions = {};
  const ca = t.ca !== undefined ? readCa(t.ca, `${path}.tls.ca`, problems) : null;
  const cert = t.cert !== undefined ? readPem(t.cert, `${path}.tls.cert`, problems) : null;
  const key = t.key !== undefined ? readPem(t.key, `${path}.tls.key`, problems) : null;
  if (problems.length > 0) return problems;
  if (ca !== null) opts.ca = ca;
  if (cert !== null) opts.cert = cert;
  if (key !== null) opts.key = key;
  try {
    tls.createSecureContext(opts);
  } catch (e) {
    problems.push({ path: `${path}.tls`, message: tlsLoadMessage(e as Error) });
  }
  return problems;
}

function isIpLiteral(s: string): boolean {
  return /^[\d.]+$/.test(s) || s.includes(':');
}
