// The handshake room: a client's first bytes, up to a startup packet on a
// (possibly TLS) socket. Owns SSLRequest and GSSENCRequest (one answer byte
// each; bytes piggybacked on a request are refused unread), direct TLS (the
// ClientHello as first byte, ALPN `postgresql`), the TLS upgrade (through
// tls/contexts.ts), CancelRequest, and the decoding of the startup packet
// with the protocol version check. It ends in exactly one way: a startup
// value handed to its host, a cancel handled, or a refusal (FATAL or quiet
// close) through its host.
// https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-SSL

import type net from 'node:net';
import type tls from 'node:tls';
import type { Context } from '../context.ts';
import type { Logger } from '../observability/log.ts';
import { LATEST_MINOR } from '../protocol/codes.ts';
import { BAD_LENGTH, NEED_MORE, startupFrame } from '../protocol/framer.ts';
import { SQLSTATE } from '../protocol/sqlstate.ts';
import { decodeStartup, type PeerCancelPacket, type StartupPacket } from '../protocol/startup.ts';
import { ProtocolViolation } from '../protocol/violation.ts';
import { anyPassthrough, type TenantMatch, tenantFor } from '../routing/tenants.ts';
import { HELLO_INVALID, HELLO_NEED_MORE, MAX_HELLO, readClientHello } from '../tls/client-hello.ts';
import { ALPN_POSTGRESQL } from '../tls/contexts.ts';

const BYTE_S = Buffer.from('S');
/** A fatal TLS alert record, no_application_protocol (120): what OpenSSL sends a direct client without ALPN `postgresql`. */
const ALERT_NO_APPLICATION_PROTOCOL = Buffer.from([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x78]);
const BYTE_N = Buffer.from('N');
const TLS_HANDSHAKE_RECORD = 0x16;

export interface TlsInfo {
  version: string;
  cipher: string;
  /** TLS-first (PostgreSQL 17 direct TLS) rather than after an SSLRequest. */
  direct: boolean;
  alpn: string | false;
  /** The TLS server name (SNI) the client sent; null when none. */
  serverName: string | null;
  /** Passed through to a server unopened (a passthrough tenant): version and cipher are not known. */
  passthrough: boolean;
}

/** A client of a passthrough tenant: its ClientHello, read but not answered, and where its TLS goes. */
export interface PassthroughStart {
  tenant: string;
  serverName: string;
  /** TLS-first client (no SSLRequest of its own). */
  direct: boolean;
  /** The bytes read so far (the ClientHello and anything after it), to be forwarded first. */
  hello: Buffer;
  to: { host: string; port: number; direct: boolean };
  tls: TlsInfo;
}

/** A startup packet, protocol 3.x, with a user name. */
export interface Startup {
  /** The socket the client speaks on from now on (the TLS socket after an upgrade). */
  socket: net.Socket;
  tls: TlsInfo | null;
  /** The minor protocol version the client asked for (3.x). */
  minor: number;
  params: Map<string, string>;
  user: string;
  database: string;
  /** The tenant chosen by the TLS server name; null: the top-level databases. */
  tenant: string | null;
  /** Bytes that came after the startup packet in the same read (a pipelining client). */
  early: Buffer;
}

export interface HandshakeHost {
  readonly ctx: Context;
  readonly log: Logger;
  debug(obj: object | string, msg?: string): void;
  /** FATAL on the socket the client speaks on now, then close. */
  fatal(code: string, message: string, detail?: string, hint?: string): void;
  /** Close without a word. */
  destroy(): void;
  /** The client now speaks TLS on this socket (its writes go there from now on). */
  secured(sock: tls.TLSSocket, info: TlsInfo): void;
  /** The startup packet. */
  startup(s: Startup): void;
  /** A passthrough tenant's client: the link takes the raw socket from here. */
  passthrough(p: PassthroughStart): void;
}

export const HANDSHAKE = {
  Negotiating: 'negotiating',
  ReadingHello: 'reading_hello',
  TlsHandshake: 'tls_handshake',
  Done: 'done',
} as const;
export type HandshakeState = (typeof HANDSHAKE)[keyof typeof HANDSHAKE];

export class Handshake {
  readonly #host: HandshakeHost;
  readonly #ctx: Context;
  /** The socket the handshake reads from: the raw one, then the TLS one. */
  #sock: net.Socket;
  readonly #raw: net.Socket;
  #buf: Buffer | null = null;
  #sslTried = false;
  #gssTried = false;
  #tls: TlsInfo | null = null;
  #tenant: TenantMatch | null = null;
  #state: HandshakeState = HANDSHAKE.Negotiating;
  /** The ClientHello read so far (passthrough tenants configured); whether it came TLS-first. */
  #hello: Buffer | null = null;
  #helloDirect = false;

  constructor(host: HandshakeHost, raw: net.Socket) {
    this.#host = host;
    this.#ctx = host.ctx;
    this.#raw = raw;
    this.#sock = raw;
    raw.on('data', this.#onData);
  }

  get state(): HandshakeState {
    return this.#state;
  }

  /** The handshake is over (or the session closes): it reads nothing more. */
  stop(): void {
    this.#state = HANDSHAKE.Done;
    this.#sock.removeListener('data', this.#onData);
  }

  #onData = (chunk: Buffer): void => this.#guard(() => this.#data(chunk));

  /** The one catch of the handshake's entries (socket data, TLS events): a bug ends this session only. */
  #guard(f: () => void): void {
    try {
      f();
    } catch (e) {
      this.stop();
      this.#host.log.error({ err: (e as Error).message, stack: (e as Error).stack }, 'internal error');
      this.#host.fatal(SQLSTATE.InternalError, 'internal error in Postern');
    }
  }

  #data(chunk: Buffer): void {
    if (this.#state === HANDSHAKE.ReadingHello) {
      this.#helloData(chunk);
      return;
    }
    if (this.#state !== HANDSHAKE.Negotiating) return;
    if (this.#buf === null && this.#tls === null && !this.#sslTried && !this.#gssTried && chunk[0] === TLS_HANDSHAKE_RECORD) {
      if (anyPassthrough(this.#ctx.config)) this.#readHello(true, chunk);
      else this.#beginTls(true, chunk);
      return;
    }
    const buf = this.#buf === null ? chunk : Buffer.concat([this.#buf, chunk]);
    this.#buf = null;
    // Every request below either ends negotiation or must be the last bytes
    // received, so one packet per call is all there can be.
    const n = startupFrame(buf, 0, buf.length);
    if (n === NEED_MORE) {
      if (buf.length > 0) this.#buf = Buffer.from(buf);
      return;
    }
    if (n < 0) {
      // Postgres logs this and closes without a reply: the peer may not speak the protocol at all.
      const reason = n === BAD_LENGTH ? 'bad_length' : 'too_large';
      this.#ctx.count(this.#ctx.stats.violations, `client/startup_${reason}`);
      this.#ctx.stats.events.add('violation', { kind: `client/startup_${reason}` });
      this.#host.log.info({ reason }, 'invalid length of startup packet');
      this.stop();
      this.#host.destroy();
      return;
    }
    let packet: StartupPacket;
    try {
      packet = decodeStartup(buf.subarray(0, n));
    } catch (e) {
      if (!(e instanceof ProtocolViolation)) throw e;
      this.stop();
      this.#host.fatal(SQLSTATE.ProtocolViolation, e.message);
      return;
    }
    const rest = buf.subarray(n);
    switch (packet.kind) {
      case 'ssl':
      case 'gssenc':
        this.#onRequest(packet.kind === 'ssl', rest);
        return;
      case 'cancel':
        this.stop();
        this.#cancel(packet.pid, packet.key);
        return;
      case 'peer-cancel':
        this.stop();
        this.#peerCancel(packet);
        return;
      case 'startup':
        this.stop();
        this.#startup(packet.major, packet.minor, packet.params, rest);
        return;
      default:
        packet satisfies never;
    }
  }

  #onRequest(ssl: boolean, rest: Buffer): void {
    if (this.#tls !== null || (ssl ? this.#sslTried : this.#gssTried)) {
      this.stop();
      this.#host.fatal(SQLSTATE.ProtocolViolation, `unexpected ${ssl ? 'SSL' : 'GSSAPI'} negotiation request`);
      return;
    }
    if (rest.length > 0) {
      // Bytes piggybacked on the request would be read as if they had
      // been encrypted (CVE-2021-23214): refuse them unread.
      this.stop();
      this.#host.fatal(SQLSTATE.ProtocolViolation, `received unencrypted data after ${ssl ? 'SSL' : 'GSSAPI encryption'} request`);
      return;
    }
    if (ssl) {
      this.#sslTried = true;
      if (anyPassthrough(this.#ctx.config)) {
        // Whose TLS it is (Postern's or a passthrough server's) is in the ClientHello that comes next.
        this.#raw.write(BYTE_S);
        this.#readHello(false, null);
        return;
      }
      if (this.#ctx.clientTls !== null) {
        this.#raw.write(BYTE_S);
        this.#beginTls(false, null);
        return;
      }
    } else this.#gssTried = true;
    this.#host.debug({ request: ssl ? 'ssl' : 'gssenc' }, 'answered N');
    this.#raw.write(BYTE_N);
  }

  /** Passthrough tenants are configured: the ClientHello is read (not answered) to learn its server name first. */
  #readHello(direct: boolean, first: Buffer | null): void {
    this.#state = HANDSHAKE.ReadingHello;
    this.#helloDirect = direct;
    this.#hello = null;
    if (first !== null) this.#helloData(first);
  }

  #helloData(chunk: Buffer): void {
    const buf = this.#hello === null ? chunk : Buffer.concat([this.#hello, chunk]);
    const hello = readClientHello(buf);
    if (hello === HELLO_NEED_MORE && buf.length <= MAX_HELLO + 64) {
      this.#hello = Buffer.from(buf);
      return;
    }
    this.#hello = null;
    if (hello === HELLO_NEED_MORE || hello === HELLO_INVALID) {
      // Not a ClientHello Postern can read: OpenSSL answers it (with an alert) if Postern has TLS at all.
      this.#state = HANDSHAKE.Negotiating;
      this.#beginTls(this.#helloDirect, buf);
      return;
    }
    const match = tenantFor(this.#ctx.config, hello.serverName);
    const to = match?.tenant.passthrough;
    if (match === null || to?.host === undefined || hello.serverName === null) {
      this.#state = HANDSHAKE.Negotiating;
      this.#beginTls(this.#helloDirect, buf);
      return;
    }
    if (this.#helloDirect && !this.#alpnAccepted(hello.alpn)) {
      // The server would never see this client's ALPN checked: refuse it here, as PostgreSQL 17 does.
      this.stop();
      this.#ctx.count(this.#ctx.stats.tlsHandshakes, 'none/fail');
      this.#host.debug({ server_name: hello.serverName, alpn: hello.alpn }, 'direct TLS without ALPN postgresql refused');
      this.#raw.end(ALERT_NO_APPLICATION_PROTOCOL);
      return;
    }
    this.stop();
    this.#raw.removeListener('data', this.#onData);
    this.#raw.pause();
    this.#host.passthrough({
      tenant: match.name,
      serverName: hello.serverName,
      direct: this.#helloDirect,
      hello: buf,
      to: { host: to.host, port: to.port, direct: to.direct },
      tls: {
        version: '',
        cipher: '',
        direct: this.#helloDirect,
        alpn: hello.alpn?.join(',') ?? false,
        serverName: hello.serverName,
        passthrough: true,
      },
    });
  }

  /** A direct-TLS client's ALPN list is acceptable: it offers `postgresql`, or offers none and tls.direct_without_alpn allows that. */
  #alpnAccepted(alpn: string[] | null): boolean {
    if (alpn === null) return this.#ctx.config.tls.direct_without_alpn;
    return alpn.includes(ALPN_POSTGRESQL);
  }

  #beginTls(direct: boolean, pending: Buffer | null): void {
    const clientTls = this.#ctx.clientTls;
    if (clientTls === null) {
      // TLS-first client but no TLS configured: nothing sensible to say in plaintext.
      this.#host.log.info('direct TLS connection refused: TLS is not configured');
      this.stop();
      this.#host.destroy();
      return;
    }
    this.#state = HANDSHAKE.TlsHandshake;
    this.#tls = { version: '', cipher: '', direct, alpn: false, serverName: null, passthrough: false };
    const raw = this.#raw;
    raw.removeListener('data', this.#onData);
    raw.pause();
    // TLS events are entries from outside: each has its own catch.
    clientTls.upgrade(raw, pending, {
      secure: (sock) => this.#guard(() => this.#onSecure(sock)),
      failed: (err) => this.#guard(() => this.#onTlsError(err)),
    });
  }

  #onSecure(sock: tls.TLSSocket): void {
    if (this.#state !== HANDSHAKE.TlsHandshake) {
      sock.destroy();
      return;
    }
    const info = this.#tls as TlsInfo;
    info.version = sock.getProtocol() ?? 'unknown';
    info.cipher = sock.getCipher().name;
    info.alpn = sock.alpnProtocol ?? false;
    info.serverName = typeof sock.servername === 'string' && sock.servername !== '' ? sock.servername.toLowerCase() : null;
    this.#tenant = tenantFor(this.#ctx.config, info.serverName);
    this.#ctx.count(this.#ctx.stats.tlsHandshakes, `${info.version}/ok`);
    this.#sock = sock;
    this.#host.secured(sock, info);
    this.#host.debug(
      { tls: info.version, cipher: info.cipher, direct: info.direct, alpn: info.alpn, server_name: info.serverName },
      'TLS established',
    );
    this.#state = HANDSHAKE.Negotiating;
    if (info.direct && info.alpn !== ALPN_POSTGRESQL && !this.#ctx.config.tls.direct_without_alpn) {
      this.stop();
      this.#host.fatal(SQLSTATE.ProtocolViolation, 'received direct SSL connection request without ALPN protocol negotiation extension');
      return;
    }
    sock.on('data', this.#onData);
  }

  /** A failed handshake closes quietly, as PostgreSQL does. */
  #onTlsError(err: Error): void {
    if (this.#state === HANDSHAKE.Done) return;
    this.#ctx.count(this.#ctx.stats.tlsHandshakes, 'none/fail');
    this.#host.log.info({ err: (err as NodeJS.ErrnoException).code ?? err.message }, 'TLS handshake failed');
    this.stop();
    this.#host.destroy();
  }

  #cancel(pid: number, key: Buffer): void {
    const ctx = this.#ctx;
    const instances = ctx.instances;
    if (ctx.cancelByKey(pid, key)) this.#host.debug('cancel request');
    else if (instances?.remote(pid)) {
      // Another instance behind the same load balancer may own it: it checks the key itself.
      ctx.count(ctx.stats.cancels, 'to_peer');
      instances.forward(pid, key);
      // Without an instance number, one of this instance's own workers may own it too.
      if (instances.id === null) ctx.peers?.cancel(pid, key);
    } else this.#otherWorkers(pid, key);
    this.#host.destroy();
  }

  /** A cancel no session of this process owns: another worker process may (it checks the key itself); else it is unknown. */
  #otherWorkers(pid: number, key: Buffer): void {
    const ctx = this.#ctx;
    if (ctx.peers !== null) ctx.peers.cancel(pid, key);
    else {
      ctx.count(ctx.stats.cancels, 'unknown');
      // Unknown keys are ignored, as Postgres does; say nothing either way.
      this.#host.debug('cancel request with unknown key ignored');
    }
  }

  /** A cancel request another instance forwarded: acted on only when its signature checks out; never forwarded again. */
  #peerCancel(p: PeerCancelPacket): void {
    const ctx = this.#ctx;
    const refused = ctx.instances === null ? 'no cluster configured' : ctx.instances.check(p);
    if (refused !== null) {
      ctx.count(ctx.stats.cancels, 'peer_refused');
      this.#host.log.info({ reason: refused }, 'forwarded cancel request refused');
    } else {
      ctx.count(ctx.stats.cancels, 'from_peer');
      if (ctx.cancelByKey(p.pid, p.key)) this.#host.debug('forwarded cancel request');
      else this.#otherWorkers(p.pid, p.key);
    }
    this.#host.destroy();
  }

  #startup(major: number, minor: number, params: Map<string, string>, early: Buffer): void {
    if (major !== 3) {
      this.#host.fatal(
        SQLSTATE.FeatureNotSupported,
        `unsupported frontend protocol ${major}.${minor}: server supports 3.0 to 3.${LATEST_MINOR}`,
      );
      return;
    }
    const user = params.get('user');
    if (user === undefined || user === '') {
      this.#host.fatal(SQLSTATE.InvalidAuthorizationSpecification, 'no PostgreSQL user name specified in startup packet');
      return;
    }
    this.#host.startup({
      socket: this.#sock,
      tls: this.#tls,
      minor,
      params,
      user,
      database: params.get('database') || user,
      tenant: this.#tenant?.name ?? null,
      early: early.length > 0 ? Buffer.from(early) : Buffer.alloc(0),
    });
  }
}
