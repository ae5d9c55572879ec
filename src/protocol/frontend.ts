// Client (frontend) messages Postern builds itself when it talks to servers,
// and decoders for the few client messages it inspects.
// https://www.postgresql.org/docs/current/protocol-message-formats.html

import { FE } from './codes.ts';
import { Writer } from './writer.ts';

/** Terminate, built once. */
export const TERMINATE: Buffer = new Writer().message(FE.Terminate);

export function encodePassword(password: string): Buffer {
  return new Writer().cstring(password).message(FE.Password);
}

export function encodeSaslInitial(mechanism: string, data: Buffer): Buffer {
  return new Writer().cstring(mechanism).int32(data.length).bytes(data).message(FE.Password);
}

export function encodeSaslResponse(data: Buffer): Buffer {
  return new Writer().bytes(data).message(FE.Password);
}

export function encodeQuery(sql: string): Buffer {
  return new Writer().cstring(sql).message(FE.Query);
}

/** Parse: statement name, query text, no parameter types (the server infers them). */
export function encodeParse(name: string, sql: string): Buffer {
  return new Writer().cstring(name).cstring(sql).int16(0).message(FE.Parse);
}

/** Bind with text parameters (NULL for null) and text results. */
export function encodeBind(portal: string, statement: string, params: readonly (string | null)[]): Buffer {
  const w = new Writer().cstring(portal).cstring(statement).int16(0).int16(params.length);
  for (const p of params) {
    if (p === null) w.int32(-1);
    else {
      const b = Buffer.from(p, 'utf8');
      w.int32(b.length).bytes(b);
    }
  }
  return w.int16(0).message(FE.Bind);
}

export function encodeExecute(portal: string, maxRows: number): Buffer {
  return new Writer().cstring(portal).int32(maxRows).message(FE.Execute);
}

/** Sync, built once. */
export const SYNC: Buffer = new Writer().message(FE.Sync);

export function encodeCopyFail(message: string): Buffer {
  return new Writer().cstring(message).message(FE.CopyFail);
}

/** The query text of a Query frame, or null when it is not terminated. */
export function queryText(buf: Buffer, start: number, end: number): string | null {
  const textEnd = buf.indexOf(0, start + 5);
  if (textEnd < 0 || textEnd >= end) return null;
  return buf.toString('utf8', start + 5, textEnd);
}

/** The query text of a Parse frame (after the statement name), or null when malformed. */
export function parseText(buf: Buffer, start: number, end: number): string | null {
  const nameEnd = buf.indexOf(0, start + 5);
  if (nameEnd < 0 || nameEnd >= end) return null;
  const textEnd = buf.indexOf(0, nameEnd + 1);
  if (textEnd < 0 || textEnd >= end) return null;
  return buf.toString('utf8', nameEnd + 1, textEnd);
}
