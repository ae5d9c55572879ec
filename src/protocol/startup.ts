// Startup-phase packets: StartupMessage (protocol 3.0 and 3.2), SSLRequest,
// GSSENCRequest, CancelRequest. Decoders take one complete packet as framed
// by `startupFrame` and may throw ProtocolViolation; encoders build the
// packets Postern sends to servers.
// https://www.postgresql.org/docs/current/protocol-message-formats.html

import { MAX_CANCEL_KEY, PEER_CANCEL_MAC, REQUEST_CODE } from './codes.ts';
import { Reader } from './reader.ts';
import { ProtocolViolation, VIOLATION } from './violation.ts';
import { Writer } from './writer.ts';

export type StartupPacket =
  | { kind: 'ssl' }
  | { kind: 'gssenc' }
  | { kind: 'cancel'; pid: number; key: Buffer }
  | PeerCancelPacket
  | {
      kind: 'startup';
      /** The raw Int32 version: major << 16 | minor. */
      version: number;
      major: number;
      minor: number;
      /** Parameters in the order the client sent them, `_pq_.*` extensions included. */
      params: Map<string, string>;
    };

/**
 * A cancel request one Postern instance forwards to another: the instance it
 * is meant for, the client's pid and key as the client sent them, the
 * sender's clock (Unix seconds) and an HMAC-SHA256 over `signed` (every byte
 * between the request code and the MAC) keyed with cluster.secret.
 */
export interface PeerCancelPacket {
  kind: 'peer-cancel';
  instance: number;
  pid: number;
  time: number;
  key: Buffer;
  signed: Buffer;
  mac: Buffer;
}

/** Decodes one complete startup-phase packet (length prefix included). */
export function decodeStartup(packet: Buffer): StartupPacket {
  const r = new Reader(packet);
  const len = r.int32();
  if (len !== packet.length) {
    throw new ProtocolViolation(VIOLATION.BadLength, 'startup packet length does not match its frame');
  }
  const code = r.int32();
  if (code === REQUEST_CODE.SSL || code === REQUEST_CODE.GSSENC) {
    if (len !== 8) throw new ProtocolViolation(VIOLATION.BadStartup, 'invalid length of startup packet');
    return { kind: code === REQUEST_CODE.SSL ? 'ssl' : 'gssenc' };
  }
  if (code === REQUEST_CODE.Cancel) {
    // 3.0 keys are 4 bytes; 3.2 allows up to 256.
    const pid = r.int32();
    const keyLen = r.remaining;
    if (keyLen < 4 || keyLen > MAX_CANCEL_KEY) {
      throw new ProtocolViolation(VIOLATION.BadStartup, 'invalid length of cancel request packet');
    }
    return { kind: 'cancel', pid, key: Buffer.from(r.rest()) };
  }
  if (code === REQUEST_CODE.PeerCancel) {
    // instance, pid, time (Int32 each), key (4..256 bytes), MAC.
    const keyLen = len - 8 - 12 - PEER_CANCEL_MAC;
    if (keyLen < 4 || keyLen > MAX_CANCEL_KEY) {
      throw new ProtocolViolation(VIOLATION.BadStartup, 'invalid length of peer cancel packet');
    }
    const instance = r.int32();
    const pid = r.int32();
    const time = r.int32() >>> 0;
    const key = Buffer.from(r.bytes(keyLen));
    const mac = Buffer.from(r.bytes(PEER_CANCEL_MAC));
    return { kind: 'peer-cancel', instance, pid, time, key, signed: Buffer.from(packet.subarray(8, len - PEER_CANCEL_MAC)), mac };
  }
  const major = code >>> 16;
  const minor = code & 0xffff;
  const params = new Map<string, string>();
  if (major === 3) {
    // name\0value\0 ... \0 ; the final terminator must be the last byte.
    for (;;) {
      if (r.remaining === 0) {
        throw new ProtocolViolation(VIOLATION.BadStartup, 'invalid startup packet layout: expected terminator as last byte');
      }
      const name = r.cstring();
      if (name === '') break;
      const value = r.cstring();
      params.set(name, value);
    }
    if (r.remaining !== 0) {
      throw new ProtocolViolation(VIOLATION.BadStartup, 'invalid startup packet layout: expected terminator as last byte');
    }
  }
  return { kind: 'startup', version: code, major, minor, params };
}

export function encodeStartup(version: number, params: Iterable<[string, string]>): Buffer {
  const w = new Writer().int32(version);
  for (const [k, v] of params) w.cstring(k).cstring(v);
  return w.byte(0).packet();
}

/** SSLRequest, built once. */
export const SSL_REQUEST: Buffer = new Writer().int32(REQUEST_CODE.SSL).packet();
/** GSSENCRequest, built once. */
export const GSSENC_REQUEST: Buffer = new Writer().int32(REQUEST_CODE.GSSENC).packet();

/** The signed part of a PeerCancel packet (what its MAC covers). */
export function peerCancelBody(instance: number, pid: number, time: number, key: Buffer): Buffer {
  return new Writer()
    .int32(instance)
    .int32(pid)
    .int32(time | 0)
    .bytes(key)
    .body();
}

/** A PeerCancel packet from its signed body and the MAC over it. */
export function encodePeerCancel(body: Buffer, mac: Buffer): Buffer {
  return new Writer().int32(REQUEST_CODE.PeerCancel).bytes(body).bytes(mac).packet();
}

export function encodeCancel(pid: number, key: Buffer): Buffer {
  return new Writer().int32(REQUEST_CODE.Cancel).int32(pid).bytes(key).packet();
}
