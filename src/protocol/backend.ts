// Server (backend) messages: decoders for the ones Postern inspects when they
// come from a server, encoders for the ones Postern synthesizes for clients.
// Decoders take one complete frame (type byte and length included) as framed by
// MessageStream and throw ProtocolViolation on malformed content. Optional wire
// fields stay optional: an ErrorResponse without a code must not crash us.
// https://www.postgresql.org/docs/current/protocol-message-formats.html
// https://www.postgresql.org/docs/current/protocol-error-fields.html

import { AUTH, BE } from './codes.ts';
import { Reader } from './reader.ts';
import { ProtocolViolation, VIOLATION } from './violation.ts';
import { Writer } from './writer.ts';

function body(buf: Buffer, start: number, end: number, type: number): Reader {
  if (buf[start] !== type) throw new ProtocolViolation(VIOLATION.Malformed, 'unexpected message type');
  const r = new Reader(buf, start + 1, end);
  if (r.int32() !== end - start - 1) throw new ProtocolViolation(VIOLATION.BadLength, 'message length mismatch');
  return r;
}

export interface AuthRequest {
  code: number;
  /** MD5: 4-byte salt; SASL*: mechanism list or SASL data; others: empty. A view, not a copy. */
  data: Buffer;
}

export function decodeAuth(buf: Buffer, start = 0, end = buf.length): AuthRequest {
  const r = body(buf, start, end, BE.Authentication);
  const code = r.int32();
  return { code, data: r.rest() };
}

/** Mechanism names of an AuthenticationSASL message's data. */
export function decodeSaslMechanisms(data: Buffer): string[] {
  const r = new Reader(data);
  const out: string[] = [];
  for (;;) {
    const m = r.cstring();
    if (m === '') break;
    out.push(m);
  }
  r.end();
  return out;
}

export function encodeAuth(code: number, data?: Buffer): Buffer {
  const w = new Writer().int32(code);
  if (data) w.bytes(data);
  return w.message(BE.Authentication);
}

export function encodeAuthSasl(mechanisms: readonly string[]): Buffer {
  const w = new Writer().int32(AUTH.SASL);
  for (const m of mechanisms) w.cstring(m);
  return w.byte(0).message(BE.Authentication);
}

export const AUTH_OK: Buffer = encodeAuth(AUTH.Ok);

export function decodeParameterStatus(buf: Buffer, start = 0, end = buf.length): [string, string] {
  const r = body(buf, start, end, BE.ParameterStatus);
  const name = r.cstring();
  const value = r.cstring();
  r.end();
  return [name, value];
}

export function encodeParameterStatus(name: string, value: string): Buffer {
  return new Writer().cstring(name).cstring(value).message(BE.ParameterStatus);
}

export interface BackendKey {
  pid: number;
  key: Buffer;
}

export function decodeBackendKeyData(buf: Buffer, start = 0, end = buf.length): BackendKey {
  const r = body(buf, start, end, BE.BackendKeyData);
  const pid = r.int32();
  const n = r.remaining;
  if (n < 4 || n > 256) throw new ProtocolViolation(VIOLATION.Malformed, 'invalid cancel key length');
  return { pid, key: Buffer.from(r.rest()) };
}

export function encodeBackendKeyData(pid: number, key: Buffer): Buffer {
  return new Writer().int32(pid).bytes(key).message(BE.BackendKeyData);
}

/** The transaction status byte of a ReadyForQuery. */
export function decodeReadyForQuery(buf: Buffer, start = 0, end = buf.length): number {
  const r = body(buf, start, end, BE.ReadyForQuery);
  const status = r.byte();
  r.end();
  return status;
}

export function encodeReadyForQuery(status: number): Buffer {
  return new Writer().byte(status).message(BE.ReadyForQuery);
}

export interface NoticeFields {
  /** Localized severity (S); always present from real servers, optional here. */
  severity?: string;
  /** Non-localized severity (V), since 9.6. */
  severityV?: string;
  code?: string;
  message?: string;
  detail?: string;
  hint?: string;
  /** Every field by its one-byte code, for relaying or logging. */
  fields: Map<string, string>;
}

/** Decodes ErrorResponse ('E') or NoticeResponse ('N'). */
export function decodeNotice(buf: Buffer, start = 0, end = buf.length): NoticeFields {
  const type = buf[start];
  if (type !== BE.ErrorResponse && type !== BE.NoticeResponse) {
    throw new ProtocolViolation(VIOLATION.Malformed, 'not an error or notice');
  }
  const r = body(buf, start, end, type);
  const fields = new Map<string, string>();
  for (;;) {
    const code = r.byte();
    if (code === 0) break;
    fields.set(String.fromCharCode(code), r.cstring());
  }
  r.end();
  const out: NoticeFields = { fields };
  const s = fields.get('S');
  if (s !== undefined) out.severity = s;
  const v = fields.get('V');
  if (v !== undefined) out.severityV = v;
  const c = fields.get('C');
  if (c !== undefined) out.code = c;
  const m = fields.get('M');
  if (m !== undefined) out.message = m;
  const d = fields.get('D');
  if (d !== undefined) out.detail = d;
  const h = fields.get('H');
  if (h !== undefined) out.hint = h;
  return out;
}

export type Severity = 'ERROR' | 'FATAL' | 'PANIC' | 'WARNING' | 'NOTICE' | 'DEBUG' | 'INFO' | 'LOG';

export interface ErrorSpec {
  severity: Severity;
  code: string;
  message: string;
  detail?: string;
  hint?: string;
  /** Source file and routine, as PostgreSQL reports them (some drivers look at the routine). */
  file?: string;
  routine?: string;
}

function encodeFields(type: number, e: ErrorSpec): Buffer {
  const w = new Writer();
  w.byte(0x53).cstring(e.severity); // S
  w.byte(0x56).cstring(e.severity); // V
  w.byte(0x43).cstring(e.code); // C
  w.byte(0x4d).cstring(e.message); // M
  if (e.detail !== undefined) w.byte(0x44).cstring(e.detail); // D
  if (e.hint !== undefined) w.byte(0x48).cstring(e.hint); // H
  if (e.file !== undefined) w.byte(0x46).cstring(e.file); // F
  if (e.routine !== undefined) w.byte(0x52).cstring(e.routine); // R
  return w.byte(0).message(type);
}

export function encodeError(e: ErrorSpec): Buffer {
  return encodeFields(BE.ErrorResponse, e);
}

export function encodeNotice(e: ErrorSpec): Buffer {
  return encodeFields(BE.NoticeResponse, e);
}

export interface NegotiateProtocol {
  /** Newest minor version the server supports. */
  minor: number;
  /** Protocol options (`_pq_.*`) the server did not recognize. */
  unsupported: string[];
}

export function decodeNegotiateProtocolVersion(buf: Buffer, start = 0, end = buf.length): NegotiateProtocol {
  const r = body(buf, start, end, BE.NegotiateProtocolVersion);
  const version = r.int32();
  const n = r.int32();
  if (n < 0 || n > r.remaining) throw new ProtocolViolation(VIOLATION.Malformed, 'invalid option count');
  const unsupported: string[] = [];
  for (let i = 0; i < n; i++) unsupported.push(r.cstring());
  r.end();
  return { minor: version & 0xffff, unsupported };
}

export function encodeNegotiateProtocolVersion(minor: number, unsupported: readonly string[]): Buffer {
  const w = new Writer().int32((3 << 16) | minor).int32(unsupported.length);
  for (const o of unsupported) w.cstring(o);
  return w.message(BE.NegotiateProtocolVersion);
}
