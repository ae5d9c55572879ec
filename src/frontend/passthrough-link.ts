// The passthrough link: a client of a passthrough tenant, spliced to that
// tenant's server without opening its TLS. Postern has read the ClientHello
// (for its server name) and nothing else; it opens the server connection,
// asks the server for TLS the way the client asked Postern (an SSLRequest of
// its own, and exactly one 'S' back; a direct-TLS server gets the hello at
// once), then forwards the hello and every later byte both ways, untouched.
// The client checks the server's own certificate, and SCRAM channel binding
// binds to it end to end. Nothing here can be pooled, routed by database or
// inspected: the link counts bytes, respects backpressure both ways, and
// closes one side when the other closes.

import net from 'node:net';
import type { Context } from '../context.ts';
import type { Logger } from '../observability/log.ts';
import { SSL_REQUEST } from '../protocol/startup.ts';
import type { PassthroughStart } from './handshake.ts';

export interface PassthroughHost {
  readonly ctx: Context;
  readonly log: Logger;
  debug(obj: object | string, msg?: string): void;
  /** Bytes from the client (forwarded to the server). */
  received(n: number): void;
  /** Bytes to the client (from the server). */
  sent(n: number): void;
  /** The splice is up: the session is active. */
  active(): void;
  /** End the session now (both sockets), nothing flushed: before the splice. */
  destroy(): void;
  /** End the session after what is queued for the client has gone out. */
  close(): void;
  internalError(e: Error): void;
}

export class PassthroughLink {
  readonly #host: PassthroughHost;
  readonly #client: net.Socket;
  readonly #p: PassthroughStart;
  #server: net.Socket | null = null;
  #timer: NodeJS.Timeout | null = null;
  #spliced = false;
  #closed = false;

  constructor(host: PassthroughHost, client: net.Socket, p: PassthroughStart) {
    this.#host = host;
    this.#client = client;
    this.#p = p;
  }

  /** "host:port" of the server, for SHOW CLIENTS and logs. */
  get target(): string {
    const { host, port } = this.#p.to;
    return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
  }

  get spliced(): boolean {
    return this.#spliced;
  }

  start(): void {
    const { host, port } = this.#p.to;
    const server = net.connect({ host, port, noDelay: true });
    this.#server = server;
    this.#timer = setTimeout(
      () => this.#guard(() => this.#fail(`timeout connecting to ${this.target}`)),
      this.#host.ctx.config.limits.server_connect_timeout,
    );
    this.#timer.unref();
    server.on('error', (e: NodeJS.ErrnoException) => this.#guard(() => this.#fail(e.code ?? e.message)));
    server.on('close', () => this.#guard(() => this.#close()));
    server.once('connect', () =>
      this.#guard(() => {
        if (this.#p.direct && this.#p.to.direct) {
          this.#splice();
          return;
        }
        server.once('data', (chunk: Buffer) => this.#guard(() => this.#answer(chunk)));
        server.write(SSL_REQUEST);
      }),
    );
  }

  /** The one catch of the link's socket events: a bug ends this session only. */
  #guard(f: () => void): void {
    try {
      f();
    } catch (e) {
      this.#host.internalError(e as Error);
    }
  }

  /** The server's answer to Postern's SSLRequest: exactly 'S', nothing after it (CVE-2021-23222). */
  #answer(chunk: Buffer): void {
    if (chunk.length !== 1 || chunk[0] !== 0x53) {
      const why =
        chunk[0] === 0x4e
          ? 'the server does not accept TLS'
          : chunk.length > 1
            ? 'the server sent bytes after its SSL response'
            : 'invalid SSL response';
      this.#fail(why);
      return;
    }
    this.#splice();
  }

  #splice(): void {
    const server = this.#server as net.Socket;
    const client = this.#client;
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    this.#spliced = true;
    this.#host.received(this.#p.hello.length);
    server.write(this.#p.hello);
    // Backpressure both ways: a side whose peer cannot take more is paused until it drains.
    client.on('data', (d: Buffer) => {
      this.#host.received(d.length);
      if (!server.write(d)) client.pause();
    });
    server.on('drain', () => client.resume());
    server.on('data', (d: Buffer) => {
      this.#host.sent(d.length);
      if (!client.write(d)) server.pause();
    });
    client.on('drain', () => server.resume());
    client.on('end', () => server.end());
    server.on('end', () => client.end());
    client.resume();
    this.#host.active();
    this.#host.debug({ tenant: this.#p.tenant, server: this.target }, 'passthrough spliced');
  }

  #fail(why: string): void {
    if (this.#closed) return;
    // The client is inside its TLS handshake: there is no Postgres error it could read. Close, as a failed handshake does.
    this.#host.log.warn({ tenant: this.#p.tenant, server: this.target, err: why }, 'passthrough server unreachable');
    this.#host.ctx.count(this.#host.ctx.stats.loginFailures, 'passthrough_unreachable');
    this.close();
    this.#host.destroy();
  }

  /** The server side closed: the client gets what is queued for it, then its end. */
  #close(): void {
    if (this.#closed) return;
    const spliced = this.#spliced;
    this.close();
    if (spliced) this.#host.close();
    else this.#host.destroy();
  }

  /** The session closes (client gone, shutdown): the server side goes too. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    const server = this.#server;
    if (server !== null && !server.destroyed) {
      server.end();
      setTimeout(() => server.destroy(), 5000).unref();
    }
  }
}
