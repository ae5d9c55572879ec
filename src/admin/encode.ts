// Encoders for the query-result messages the admin console sends as a tiny
// PostgreSQL server: RowDescription, DataRow, CommandComplete and the
// extended-protocol acknowledgements. Pure Buffer code, like src/protocol.
// https://www.postgresql.org/docs/current/protocol-message-formats.html

import { BE } from '../protocol/codes.ts';
import { Writer } from '../protocol/writer.ts';

export type ColumnType = 'text' | 'int4' | 'int8' | 'bool';
export interface Column {
  name: string;
  type: ColumnType;
}
export type Cell = string | number | bigint | boolean | null;

/** Format codes of Bind and RowDescription. */
export const FORMAT = { Text: 0, Binary: 1 } as const;

/** pg_type OIDs and typlen of the column types (src/include/catalog/pg_type.dat). */
export const TYPE_OID: Readonly<Record<ColumnType, number>> = { text: 25, int4: 23, int8: 20, bool: 16 };
const TYPE_LEN: Readonly<Record<ColumnType, number>> = { text: -1, int4: 4, int8: 8, bool: 1 };

/** The OID ParameterDescription reports for a parameter whose type Parse left unspecified (0). */
export const UNSPECIFIED_PARAM_OID = TYPE_OID.text;

function constant(type: number): Buffer {
  return new Writer().message(type);
}

export const PARSE_COMPLETE: Buffer = constant(BE.ParseComplete);
export const BIND_COMPLETE: Buffer = constant(BE.BindComplete);
export const CLOSE_COMPLETE: Buffer = constant(BE.CloseComplete);
export const NO_DATA: Buffer = constant(BE.NoData);
export const EMPTY_QUERY_RESPONSE: Buffer = constant(BE.EmptyQueryResponse);
export const PORTAL_SUSPENDED: Buffer = constant(BE.PortalSuspended);

export function encodeCommandComplete(tag: string): Buffer {
  return new Writer().cstring(tag).message(BE.CommandComplete);
}

export function encodeParameterDescription(oids: readonly number[]): Buffer {
  const w = new Writer().int16(oids.length);
  for (const oid of oids) w.int32(oid);
  return w.message(BE.ParameterDescription);
}

/**
 * RowDescription; formats[i] is column i's format code (text when missing),
 * as Bind resolved it.
 */
export function encodeRowDescription(columns: readonly Column[], formats: readonly number[] = []): Buffer {
  const w = new Writer().int16(columns.length);
  for (let i = 0; i < columns.length; i++) {
    const c = columns[i] as Column;
    w.cstring(c.name)
      .int32(0) // table OID: not a table column
      .int16(0) // attribute number
      .int32(TYPE_OID[c.type])
      .int16(TYPE_LEN[c.type])
      .int32(-1) // typmod
      .int16(formats[i] ?? FORMAT.Text);
  }
  return w.message(BE.RowDescription);
}

function textOf(v: Exclude<Cell, null>): string {
  if (typeof v === 'boolean') return v ? 't' : 'f';
  return typeof v === 'string' ? v : v.toString();
}

function badCell(v: Exclude<Cell, null>, type: ColumnType): RangeError {
  return new RangeError(`cannot send ${typeof v} ${String(v)} as binary ${type}`);
}

function toBigInt(v: Exclude<Cell, null>, type: ColumnType): bigint {
  if (typeof v === 'bigint') return v;
  if (typeof v === 'number') {
    if (!Number.isSafeInteger(v)) throw badCell(v, type);
    return BigInt(v);
  }
  if (typeof v === 'boolean') return v ? 1n : 0n;
  try {
    return BigInt(v.trim());
  } catch {
    throw badCell(v, type);
  }
}

function toBool(v: Exclude<Cell, null>): boolean {
  if (typeof v === 'boolean') return v;
  if (typeof v === 'number') return v !== 0;
  if (typeof v === 'bigint') return v !== 0n;
  switch (v.trim().toLowerCase()) {
    case 't':
    case 'true':
    case 'on':
    case 'yes':
    case '1':
      return true;
    case 'f':
    case 'false':
    case 'off':
    case 'no':
    case '0':
      return false;
    default:
      throw badCell(v, 'bool');
  }
}

/** Binary send format of one value (int4/int8 big-endian, bool one byte, text UTF-8). */
function binaryOf(v: Exclude<Cell, null>, type: ColumnType): Buffer {
  switch (type) {
    case 'text':
      return Buffer.from(textOf(v), 'utf8');
    case 'int4': {
      const n = toBigInt(v, type);
      if (BigInt.asIntN(32, n) !== n) throw badCell(v, type);
      const b = Buffer.allocUnsafe(4);
      b.writeInt32BE(Number(n));
      return b;
    }
    case 'int8': {
      const n = toBigInt(v, type);
      if (BigInt.asIntN(64, n) !== n) throw badCell(v, type);
      const b = Buffer.allocUnsafe(8);
      b.writeBigInt64BE(n);
      return b;
    }
    case 'bool':
      return Buffer.from([toBool(v) ? 1 : 0]);
    default:
      throw new RangeError(`unknown column type ${type satisfies never}`);
  }
}

/**
 * DataRow of one result row; cell i is encoded in formats[i] (text when
 * missing) as columns[i]'s type (text when the row is longer than columns).
 * Throws RangeError when a cell cannot be sent in the binary form of its type.
 */
export function encodeDataRow(row: readonly Cell[], columns: readonly Column[], formats: readonly number[] = []): Buffer {
  const fields: (Buffer | null)[] = new Array(row.length);
  let size = 4 + 2;
  for (let i = 0; i < row.length; i++) {
    const v = row[i] ?? null;
    let f: Buffer | null = null;
    if (v !== null) {
      f = formats[i] === FORMAT.Binary ? binaryOf(v, columns[i]?.type ?? 'text') : Buffer.from(textOf(v), 'utf8');
      size += f.length;
    }
    fields[i] = f;
    size += 4;
  }
  const out = Buffer.allocUnsafe(1 + size);
  out[0] = BE.DataRow;
  out.writeInt32BE(size, 1);
  out.writeInt16BE(row.length, 5);
  let off = 7;
  for (const f of fields) {
    if (f === null) {
      out.writeInt32BE(-1, off);
      off += 4;
    } else {
      out.writeInt32BE(f.length, off);
      f.copy(out, off + 4);
      off += 4 + f.length;
    }
  }
  return out;
}
