// Opening a transport to a PostgreSQL server: TCP, then (per the database's
// tls.mode) an SSLRequest, exactly one answer byte, and a TLS handshake with
// the configured certificate checks. Bytes the server sends after its 'S'
// and before the handshake are rejected (CVE-2021-23222: a man in the middle
// could otherwise inject plaintext that would be read as if encrypted).
// The returned socket is paused with no data listener attached.

import net from 'node:net';
import tls from 'node:tls';
import { PosternError } from '../errors.ts';
import { SSL_REQUEST } from '../protocol/startup.ts';
import { ALPN_POSTGRESQL, type ServerTlsOptions } from '../tls/contexts.ts';

export interface ServerTransport {
  socket: net.Socket;
  tls: { version: string; cipher: string } | null;
  /** The socket delivers its bytes to the `onread` callback given to connectServer, not as 'data' events. */
  onread: boolean;
}

/**
 * Reads into caller-owned memory (net.Socket's `onread`): `buffer` is asked
 * for the memory of the next read after every callback, so a buffer can be
 * reused as long as nothing still refers to the bytes of the last read.
 */
export interface ReadInto {
  buffer: () => Buffer;
  callback: (n: number, buf: Buffer) => boolean;
}

/** Postern could not open a transport to a server (timeout, TLS refused or failed its checks, injected bytes): code ERR_SERVER_*. */
export class ServerConnectError extends PosternError {
  constructor(code: string, message: string) {
    super(message, code);
    this.name = 'ServerConnectError';
  }
}

/**
 * `readInto` is used for a plaintext link (tls.mode disable): no SSLRequest
 * answer to read first, and no TLS layer that would own the reads.
 */
export function connectServer(
  host: string,
  port: number,
  tlsOpts: ServerTlsOptions,
  timeoutMs: number,
  readInto?: ReadInto,
): Promise<ServerTransport> {
  return new Promise((resolve, reject) => {
    let done = false;
    const direct = readInto !== undefined && tlsOpts.mode === 'disable';
    let current: net.Socket = direct
      ? net.connect({ host, port, noDelay: true, onread: readInto })
      : net.connect({ host, port, noDelay: true });
    const timer = setTimeout(
      () => fail(new ServerConnectError('ERR_SERVER_CONNECT_TIMEOUT', `timeout connecting to ${host}:${port}`)),
      timeoutMs,
    );
    timer.unref();

    function fail(err: Error): void {
      if (done) return;
      done = true;
      clearTimeout(timer);
      current.destroy();
      reject(err);
    }
    function succeed(t: ServerTransport): void {
      if (done) return;
      done = true;
      clearTimeout(timer);
      t.socket.removeListener('error', fail);
      t.socket.pause();
      resolve(t);
    }

    current.once('error', fail);
    current.once('connect', () => {
      if (tlsOpts.mode === 'disable') {
        succeed({ socket: current, tls: null, onread: direct });
        return;
      }
      const raw = current;
      if (tlsOpts.direct) {
        // PostgreSQL 17 direct TLS: the ClientHello is the first byte, no SSLRequest round trip.
        handshake(raw);
        return;
      }
      raw.once('data', (chunk: Buffer) => {
        raw.pause();
        const answer = chunk[0];
        if (chunk.length > 1) {
          fail(new ServerConnectError('ERR_SERVER_SSL_INJECTION', 'server sent unexpected bytes after its SSL response'));
          return;
        }
        if (answer === 0x4e /* N */) {
          if (tlsOpts.mode === 'prefer') {
            succeed({ socket: raw, tls: null, onread: false });
          } else {
            fail(new ServerConnectError('ERR_SERVER_NO_TLS', 'server does not support TLS, but tls.mode requires it'));
          }
          return;
        }
        if (answer !== 0x53 /* S */) {
          fail(new ServerConnectError('ERR_SERVER_BAD_SSL_RESPONSE', `invalid response to SSLRequest: ${answer}`));
          return;
        }
        handshake(raw);
      });
      raw.write(SSL_REQUEST);
    });

    function handshake(raw: net.Socket): void {
      const secure = tls.connect({ ...tlsOpts.connect, socket: raw });
      current = secure;
      secure.once('error', (err: Error) => {
        // With rejectUnauthorized Node destroys the socket itself on a bad
        // chain or name (after setting authorizationError), so the check in
        // 'secureConnect' below never sees those: report them as what they are.
        if (secure.authorizationError) {
          fail(new ServerConnectError('ERR_SERVER_CERT', `server certificate rejected: ${err.message}`));
        } else {
          fail(err);
        }
      });
      secure.once('secureConnect', () => {
        if (!secure.authorized && tlsOpts.connect.rejectUnauthorized) {
          fail(new ServerConnectError('ERR_SERVER_CERT', `server certificate rejected: ${String(secure.authorizationError)}`));
          return;
        }
        if (tlsOpts.direct && secure.alpnProtocol !== ALPN_POSTGRESQL) {
          // As libpq: a server that did not choose ALPN postgresql may not speak the protocol on this port.
          fail(new ServerConnectError('ERR_SERVER_NO_ALPN', 'server did not select ALPN protocol postgresql for direct TLS'));
          return;
        }
        const c = secure.getCipher();
        succeed({ socket: secure, tls: { version: secure.getProtocol() ?? 'unknown', cipher: c.name }, onread: false });
      });
    }
  });
}
