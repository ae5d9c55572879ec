// A small TCP fault injector between Postern and PostgreSQL: forwards both
// ways untouched until told to break something. Faults: reset every
// connection (RST), cut them cleanly (FIN), hold the server's bytes back
// (delay), or inject bytes toward Postern as if the server had sent them.
// Only tests use it.

import net from 'node:net';

export interface FaultProxy {
  port: number;
  /** Connections open through the proxy. */
  readonly open: number;
  /** Connections ever accepted. */
  readonly accepted: number;
  /** Resets every open connection (both sides see ECONNRESET). */
  reset(): void;
  /** Ends every open connection cleanly. */
  cut(): void;
  /** Holds bytes from the server until release() (true) or forwards them again. */
  hold(on: boolean): void;
  /** Sends bytes to Postern on every open connection, as if the server had. */
  inject(bytes: Buffer): void;
  close(): Promise<void>;
}

export async function startFaultProxy(targetHost: string, targetPort: number): Promise<FaultProxy> {
  const pairs = new Set<{ client: net.Socket; server: net.Socket; held: Buffer[] }>();
  let holding = false;
  let accepted = 0;
  const server = net.createServer((client) => {
    accepted++;
    const upstream = net.connect(targetPort, targetHost);
    const pair = { client, server: upstream, held: [] as Buffer[] };
    pairs.add(pair);
    const done = (): void => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', done);
    upstream.on('error', done);
    client.on('close', done);
    upstream.on('close', done);
    client.on('data', (d) => upstream.write(d));
    upstream.on('data', (d: Buffer) => {
      if (holding) pair.held.push(d);
      else client.write(d);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    port: (server.address() as net.AddressInfo).port,
    get open() {
      return pairs.size;
    },
    get accepted() {
      return accepted;
    },
    reset() {
      for (const p of [...pairs]) {
        p.client.resetAndDestroy();
        p.server.resetAndDestroy();
      }
    },
    cut() {
      for (const p of [...pairs]) {
        p.client.end();
        p.server.end();
      }
    },
    hold(on) {
      holding = on;
      if (!on) for (const p of pairs) for (const b of p.held.splice(0)) p.client.write(b);
    },
    inject(bytes) {
      for (const p of pairs) p.client.write(bytes);
    },
    close: () =>
      new Promise<void>((r) => {
        for (const p of [...pairs]) {
          p.client.destroy();
          p.server.destroy();
        }
        server.close(() => r());
      }),
  };
}
