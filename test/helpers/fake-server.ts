// A scripted stand-in for a PostgreSQL server, for what a real server never
// does on purpose: malformed or unexpected messages. It answers SSLRequest
// with 'N', accepts any startup with AuthenticationOk and the usual
// ParameterStatus set, then answers each client message with what the test's
// script returns (default: what a server would answer to an empty query).
// Only tests use it; everything a real server can do is tested against one.

import net from 'node:net';
import { encodeBackendKeyData, encodeParameterStatus, encodeReadyForQuery } from '../../src/protocol/backend.ts';
import { BE, FE } from '../../src/protocol/codes.ts';
import { Writer } from '../../src/protocol/writer.ts';

export interface FakeServer {
  port: number;
  /** Client messages received (type and whole frame), across connections. */
  received: Array<{ type: string; frame: Buffer }>;
  /** Connections accepted so far. */
  connections: number;
  /** Connections open now. */
  readonly open: number;
  /** Destroys every open connection (the server process died). */
  dropAll(): void;
  close(): Promise<void>;
}

/** Answers to one client message: the bytes to send, or 'close' to hang up. */
export type Script = (type: string, frame: Buffer, conn: number) => Buffer | 'close' | null;

const READY = encodeReadyForQuery(0x49);

function msg(type: number, body: Buffer = Buffer.alloc(0)): Buffer {
  return new Writer().bytes(body).message(type);
}

/** What a server answers when the script has nothing to say: enough for set_config, Sync and simple queries. */
export function standardAnswer(type: string, frame: Buffer): Buffer | null {
  switch (type.charCodeAt(0)) {
    case FE.Query:
      return Buffer.concat([msg(BE.EmptyQueryResponse), READY]);
    case FE.Parse:
      return msg(BE.ParseComplete);
    case FE.Bind:
      return msg(BE.BindComplete);
    case FE.Describe:
      return msg(BE.NoData);
    case FE.Execute: {
      // One text column holding '', as set_config/current_setting would return a value.
      const row = new Writer().int16(1).int32(0).message(BE.DataRow);
      return Buffer.concat([row, new Writer().cstring('SELECT 1').message(BE.CommandComplete)]);
    }
    case FE.Sync:
      return READY;
    case FE.Close:
      return msg(BE.CloseComplete);
    default:
      void frame;
      return null;
  }
}

export async function startFakeServer(script: Script = () => null): Promise<FakeServer> {
  const received: FakeServer['received'] = [];
  const sockets = new Set<net.Socket>();
  const state = { connections: 0 };
  const server = net.createServer((sock) => {
    const conn = ++state.connections;
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => {});
    let buf = Buffer.alloc(0);
    let started = false;
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        if (!started) {
          if (buf.length < 8) return;
          const len = buf.readInt32BE(0);
          if (buf.length < len) return;
          const code = buf.readInt32BE(4);
          buf = buf.subarray(len);
          if (code === 80877103 || code === 80877104) {
            sock.write('N');
            continue;
          }
          started = true;
          const hello: Buffer[] = [new Writer().int32(0).message(BE.Authentication)];
          for (const [k, v] of [
            ['server_version', '15.0 (fake)'],
            ['server_encoding', 'UTF8'],
            ['client_encoding', 'UTF8'],
            ['DateStyle', 'ISO, MDY'],
            ['TimeZone', 'UTC'],
            ['integer_datetimes', 'on'],
            ['standard_conforming_strings', 'on'],
            ['application_name', ''],
          ])
            hello.push(encodeParameterStatus(k as string, v as string));
          hello.push(encodeBackendKeyData(1000 + conn, Buffer.from([1, 2, 3, 4])), READY);
          sock.write(Buffer.concat(hello));
          continue;
        }
        if (buf.length < 5) return;
        const len = buf.readInt32BE(1);
        if (buf.length < len + 1) return;
        const frame = Buffer.from(buf.subarray(0, len + 1));
        buf = buf.subarray(len + 1);
        const type = String.fromCharCode(frame[0] as number);
        received.push({ type, frame });
        if (type === 'X') {
          sock.end();
          return;
        }
        const answer = script(type, frame, conn) ?? standardAnswer(type, frame);
        if (answer === 'close') {
          sock.destroy();
          return;
        }
        if (answer !== null) sock.write(answer);
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    received,
    get connections() {
      return state.connections;
    },
    get open() {
      return sockets.size;
    },
    dropAll() {
      for (const s of sockets) s.destroy();
    },
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}
