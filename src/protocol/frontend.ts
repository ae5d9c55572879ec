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
