// Decoders and encoders of startup packets and server messages, on hand-built
// bytes (so a symmetric encoder/decoder bug cannot hide) and on encoder
// output. Malformed input must throw ProtocolViolation, and no decoder may
// read past the `end` it was given even when the buffer continues.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  AUTH_OK,
  decodeAuth,
  decodeBackendKeyData,
  decodeNegotiateProtocolVersion,
  decodeNotice,
  decodeParameterStatus,
  decodeReadyForQuery,
  decodeSaslMechanisms,
  encodeAuth,
  encodeAuthSasl,
  encodeBackendKeyData,
  encodeError,
  encodeNegotiateProtocolVersion,
  encodeNotice,
  encodeParameterStatus,
  encodeReadyForQuery,
} from '../../src/protocol/backend.ts';
import { AUTH, BE, PROTOCOL_3_0, PROTOCOL_3_2, REQUEST_CODE, TX } from '../../src/protocol/codes.ts';
import { encodePassword, encodeQuery, encodeSaslInitial, TERMINATE } from '../../src/protocol/frontend.ts';
import { Reader } from '../../src/protocol/reader.ts';
import {
  decodeStartup,
  encodeCancel,
  encodePeerCancel,
  encodeStartup,
  GSSENC_REQUEST,
  peerCancelBody,
  SSL_REQUEST,
} from '../../src/protocol/startup.ts';
import { ProtocolViolation, VIOLATION, type ViolationKind } from '../../src/protocol/violation.ts';

// ---------------------------------------------------------------- helpers

const i32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(v);
  return b;
};
const cstr = (...s: string[]) => Buffer.from(s.map((x) => `${x}\0`).join(''), 'utf8');
const bytes = (...parts: (Buffer | number[] | string)[]) =>
  Buffer.concat(parts.map((p) => (Buffer.isBuffer(p) ? p : typeof p === 'string' ? Buffer.from(p, 'latin1') : Buffer.from(p))));

/** Typed frame with a correct length. */
function msg(type: string, ...body: (Buffer | number[] | string)[]): Buffer {
  const b = bytes(...body);
  return bytes(type, i32(b.length + 4), b);
}
/** Typed frame with an explicit length field. */
function msgLen(type: string, len: number, ...body: (Buffer | number[] | string)[]): Buffer {
  return bytes(type, i32(len), bytes(...body));
}
/** Startup packet with a correct length. */
function packet(...body: (Buffer | number[] | string)[]): Buffer {
  const b = bytes(...body);
  return bytes(i32(b.length + 4), b);
}

function throwsViolation(fn: () => unknown, kind?: ViolationKind, label?: string): void {
  assert.throws(
    fn,
    (e: unknown) => {
      assert.ok(e instanceof ProtocolViolation, `${label ?? ''}: expected ProtocolViolation, got ${String(e)}`);
      if (kind !== undefined) assert.equal(e.kind, kind, label);
      return true;
    },
    label,
  );
}

/**
 * Places `frame` inside a larger buffer, with junk before it and `after` right
 * after its end, and returns [buf, start, end].
 */
function embed(frame: Buffer, after: number[] = [0, 0, 0, 0]): [Buffer, number, number] {
  const before = Buffer.from([0xee, 0xee, 0xee]);
  return [Buffer.concat([before, frame, Buffer.from(after)]), before.length, before.length + frame.length];
}

// ---------------------------------------------------------------- startup

describe('decodeStartup', () => {
  it('protocol 3.0 StartupMessage: params in order, _pq_ extensions kept', () => {
    const p = packet(
      i32(196608),
      cstr('user', 'alice', 'database', 'app', '_pq_.x', 'y', 'application_name', 'psql', 'options', '-c search_path=a'),
      [0],
    );
    const d = decodeStartup(p);
    assert.equal(d.kind, 'startup');
    if (d.kind !== 'startup') return;
    assert.equal(d.version, PROTOCOL_3_0);
    assert.equal(d.major, 3);
    assert.equal(d.minor, 0);
    assert.deepEqual(
      [...d.params],
      [
        ['user', 'alice'],
        ['database', 'app'],
        ['_pq_.x', 'y'],
        ['application_name', 'psql'],
        ['options', '-c search_path=a'],
      ],
    );
  });

  it('protocol 3.2 StartupMessage, with an empty value and UTF-8', () => {
    const p = packet(i32(196610), cstr('_pq_.compression', 'on', 'user', 'jürgen', 'application_name', ''), [0]);
    const d = decodeStartup(p);
    assert.ok(d.kind === 'startup');
    assert.equal(d.version, PROTOCOL_3_2);
    assert.equal(d.minor, 2);
    assert.deepEqual(
      [...d.params],
      [
        ['_pq_.compression', 'on'],
        ['user', 'jürgen'],
        ['application_name', ''],
      ],
    );
  });

  it('SSLRequest and GSSENCRequest, hand-built and as the constants', () => {
    assert.deepEqual([...SSL_REQUEST], [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
    assert.deepEqual([...GSSENC_REQUEST], [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]);
    assert.deepEqual(decodeStartup(packet(i32(80877103))), { kind: 'ssl' });
    assert.deepEqual(decodeStartup(packet(i32(80877104))), { kind: 'gssenc' });
    assert.deepEqual(decodeStartup(SSL_REQUEST), { kind: 'ssl' });
    assert.deepEqual(decodeStartup(GSSENC_REQUEST), { kind: 'gssenc' });
  });

  it('SSLRequest / GSSENCRequest with a length other than 8 are rejected', () => {
    throwsViolation(() => decodeStartup(packet(i32(REQUEST_CODE.SSL), i32(0))), VIOLATION.BadStartup, 'ssl 12');
    throwsViolation(() => decodeStartup(packet(i32(REQUEST_CODE.GSSENC), [0])), VIOLATION.BadStartup, 'gssenc 9');
  });

  it('CancelRequest with a 4-byte key (3.0) and a 32-byte key (3.2)', () => {
    const k4 = Buffer.from([0xde, 0xad, 0xbe, 0xef]);
    const hand = packet(i32(80877102), i32(4711), k4);
    assert.equal(hand.length, 16);
    assert.deepEqual(encodeCancel(4711, k4), hand);
    const d4 = decodeStartup(hand);
    assert.deepEqual(d4, { kind: 'cancel', pid: 4711, key: k4 });

    const k32 = Buffer.alloc(32);
    for (let i = 0; i < 32; i++) k32[i] = 255 - i;
    const p32 = encodeCancel(-5, k32);
    assert.equal(p32.length, 44);
    const d32 = decodeStartup(p32);
    assert.ok(d32.kind === 'cancel');
    assert.equal(d32.pid, -5);
    assert.deepEqual(d32.key, k32);
    // The key is a copy: later reuse of the socket buffer must not change it.
    p32.fill(0);
    assert.deepEqual(d32.key, k32);
  });

  it('CancelRequest keys of 4 and 256 bytes are accepted; shorter than 4 or longer than 256 rejected', () => {
    for (const n of [4, 5, 256]) {
      const d = decodeStartup(encodeCancel(1, Buffer.alloc(n, 7)));
      assert.ok(d.kind === 'cancel' && d.key.length === n, `key ${n}`);
    }
    for (const n of [0, 1, 3, 257, 1000]) {
      throwsViolation(() => decodeStartup(encodeCancel(1, Buffer.alloc(n, 7))), VIOLATION.BadStartup, `key ${n}`);
    }
    // No room even for the pid.
    throwsViolation(() => decodeStartup(packet(i32(REQUEST_CODE.Cancel), [0, 1])), undefined, 'no pid');
  });

  it('PeerCancel (Postern to Postern): fields, signed bytes and MAC round-trip; key length bounds hold', () => {
    const key = Buffer.from([1, 2, 3, 4]);
    const body = peerCancelBody(7, (7 << 23) | 99, 0xfffffff0, key);
    const mac = Buffer.alloc(32, 0xab);
    const p = encodePeerCancel(body, mac);
    assert.equal(p.readInt32BE(4), REQUEST_CODE.PeerCancel);
    const d = decodeStartup(p);
    assert.ok(d.kind === 'peer-cancel');
    assert.equal(d.instance, 7);
    assert.equal(d.pid, (7 << 23) | 99);
    assert.equal(d.time, 0xfffffff0, 'the clock is unsigned');
    assert.deepEqual(d.key, key);
    assert.deepEqual(d.signed, body);
    assert.deepEqual(d.mac, mac);
    assert.ok(decodeStartup(encodePeerCancel(peerCancelBody(-1, 1, 1, Buffer.alloc(256)), mac)).kind === 'peer-cancel');
    for (const n of [0, 3, 257]) {
      throwsViolation(
        () => decodeStartup(encodePeerCancel(peerCancelBody(1, 1, 1, Buffer.alloc(n)), mac)),
        VIOLATION.BadStartup,
        `key ${n}`,
      );
    }
    // A MAC cut short leaves too few bytes.
    throwsViolation(
      () => decodeStartup(encodePeerCancel(peerCancelBody(1, 1, 1, key), Buffer.alloc(8))),
      VIOLATION.BadStartup,
      'short mac',
    );
  });

  it('rejects a packet whose final terminator is missing', () => {
    throwsViolation(() => decodeStartup(packet(i32(PROTOCOL_3_0), cstr('user', 'alice'))), VIOLATION.BadStartup);
    throwsViolation(() => decodeStartup(packet(i32(PROTOCOL_3_0))), VIOLATION.BadStartup, 'no parameters, no terminator');
  });

  it('rejects unterminated strings and trailing bytes after the terminator', () => {
    throwsViolation(() => decodeStartup(packet(i32(PROTOCOL_3_0), cstr('user'), 'ali')), VIOLATION.Malformed, 'value');
    throwsViolation(() => decodeStartup(packet(i32(PROTOCOL_3_0), 'user')), VIOLATION.Malformed, 'name');
    throwsViolation(() => decodeStartup(packet(i32(PROTOCOL_3_0), cstr('user', 'a'), [0], 'xy')), VIOLATION.BadStartup, 'trailing');
    throwsViolation(() => decodeStartup(packet(i32(PROTOCOL_3_0), cstr('user'), [0])), undefined, 'name without value');
  });

  it('never reads past the packet even when the buffer continues with a NUL', () => {
    const whole = Buffer.concat([packet(i32(PROTOCOL_3_0), cstr('user', 'alice'), 'x'), Buffer.from([0, 0, 0])]);
    const view = whole.subarray(0, whole.length - 3);
    throwsViolation(() => decodeStartup(view), VIOLATION.Malformed);
    // Missing terminator, but one follows in the buffer.
    const w2 = Buffer.concat([packet(i32(PROTOCOL_3_0), cstr('user', 'alice')), Buffer.from([0])]);
    throwsViolation(() => decodeStartup(w2.subarray(0, w2.length - 1)), VIOLATION.BadStartup);
  });

  it('rejects a length field that disagrees with the packet', () => {
    const p = packet(i32(PROTOCOL_3_0), cstr('user', 'a'), [0]);
    p.writeInt32BE(p.length + 1, 0);
    throwsViolation(() => decodeStartup(p), VIOLATION.BadLength);
    throwsViolation(() => decodeStartup(Buffer.from([0, 0, 0])), VIOLATION.Truncated, 'shorter than a length');
  });

  it('encodeStartup / decodeStartup round trip keeps order and bytes', () => {
    const params: [string, string][] = [
      ['user', 'bob'],
      ['database', 'db with spaces'],
      ['_pq_.ext', '1'],
      ['client_encoding', 'UTF8'],
      ['application_name', 'naïve ✓'],
    ];
    for (const v of [PROTOCOL_3_0, PROTOCOL_3_2]) {
      const p = encodeStartup(v, params);
      assert.equal(p.readInt32BE(0), p.length);
      assert.equal(p.at(-1), 0);
      const d = decodeStartup(p);
      assert.ok(d.kind === 'startup');
      assert.equal(d.version, v);
      assert.deepEqual([...d.params], params);
    }
    assert.deepEqual(encodeStartup(PROTOCOL_3_0, [['user', 'u']]), packet(i32(196608), cstr('user', 'u'), [0]));
  });
});

// ---------------------------------------------------------------- backend messages

describe('Authentication', () => {
  it('AuthenticationOk', () => {
    assert.deepEqual([...AUTH_OK], [0x52, 0, 0, 0, 8, 0, 0, 0, 0]);
    const d = decodeAuth(msg('R', i32(0)));
    assert.equal(d.code, AUTH.Ok);
    assert.equal(d.data.length, 0);
  });

  it('AuthenticationMD5Password with its salt', () => {
    const salt = Buffer.from([1, 2, 0, 255]);
    const hand = msg('R', i32(5), salt);
    assert.deepEqual(encodeAuth(AUTH.MD5Password, salt), hand);
    const d = decodeAuth(hand);
    assert.equal(d.code, AUTH.MD5Password);
    assert.deepEqual(d.data, salt);
  });

  it('AuthenticationSASL mechanism list', () => {
    const hand = msg('R', i32(10), cstr('SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256'), [0]);
    assert.deepEqual(encodeAuthSasl(['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256']), hand);
    const d = decodeAuth(hand);
    assert.equal(d.code, AUTH.SASL);
    assert.deepEqual(decodeSaslMechanisms(d.data), ['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256']);
    assert.deepEqual(decodeSaslMechanisms(decodeAuth(encodeAuthSasl([])).data), []);
  });

  it('SASL mechanism list: missing terminator or trailing bytes rejected; the bound is the data view', () => {
    throwsViolation(() => decodeSaslMechanisms(cstr('SCRAM-SHA-256')), VIOLATION.Malformed, 'no final NUL');
    throwsViolation(() => decodeSaslMechanisms(Buffer.concat([cstr('SCRAM-SHA-256'), Buffer.from([0, 0x41])])), VIOLATION.Malformed);
    // The mechanism name's NUL lies outside the message: decodeAuth's data view must end at the frame end.
    const [buf, start, end] = embed(msg('R', i32(10), 'SCRAM-SHA-256'), [0, 0]);
    const d = decodeAuth(buf, start, end);
    assert.equal(d.data.length, 'SCRAM-SHA-256'.length);
    throwsViolation(() => decodeSaslMechanisms(d.data), VIOLATION.Malformed);
  });

  it('decodes at an offset inside a larger buffer and keeps data within the frame', () => {
    const [buf, start, end] = embed(msg('R', i32(12), Buffer.from('server-final')), [0x41, 0x42]);
    const d = decodeAuth(buf, start, end);
    assert.equal(d.code, AUTH.SASLFinal);
    assert.equal(d.data.toString(), 'server-final');
  });

  it('malformed Authentication frames throw', () => {
    throwsViolation(() => decodeAuth(msg('R', [0, 0])), VIOLATION.Truncated, 'short code');
    throwsViolation(() => decodeAuth(msgLen('R', 9, i32(0))), VIOLATION.BadLength, 'length too big');
    throwsViolation(() => decodeAuth(msgLen('R', 7, i32(0))), VIOLATION.BadLength, 'length too small');
    throwsViolation(() => decodeAuth(msg('S', i32(0))), VIOLATION.Malformed, 'wrong type');
    throwsViolation(() => decodeAuth(Buffer.from([0x52, 0, 0])), undefined, 'shorter than a header');
  });
});

describe('ParameterStatus', () => {
  it('hand-built and round trip', () => {
    const hand = msg('S', cstr('TimeZone', 'Europe/Berlin'));
    assert.deepEqual(encodeParameterStatus('TimeZone', 'Europe/Berlin'), hand);
    assert.deepEqual(decodeParameterStatus(hand), ['TimeZone', 'Europe/Berlin']);
    assert.deepEqual(decodeParameterStatus(encodeParameterStatus('application_name', '')), ['application_name', '']);
  });

  it('string running past the message end throws even when a NUL follows in the buffer', () => {
    const [buf, start, end] = embed(msg('S', cstr('TimeZone'), 'UTC'), [0, 0, 0]);
    throwsViolation(() => decodeParameterStatus(buf, start, end), VIOLATION.Malformed);
    const [b2, s2, e2] = embed(msg('S', 'TimeZone'), [0, 0x55, 0]);
    throwsViolation(() => decodeParameterStatus(b2, s2, e2), VIOLATION.Malformed);
  });

  it('trailing bytes, wrong inner length', () => {
    throwsViolation(() => decodeParameterStatus(msg('S', cstr('a', 'b'), 'x')), VIOLATION.Malformed);
    const good = msg('S', cstr('a', 'b'));
    const [buf, start, end] = embed(good);
    assert.deepEqual(decodeParameterStatus(buf, start, end), ['a', 'b']);
    // A frame whose length field claims more than [start, end).
    throwsViolation(() => decodeParameterStatus(buf, start, end - 1), VIOLATION.BadLength);
    throwsViolation(() => decodeParameterStatus(buf, start, end + 1), VIOLATION.BadLength);
  });
});

describe('BackendKeyData', () => {
  it('4-byte key (3.0) and 32-byte key (3.2), hand-built and round trip', () => {
    const k4 = Buffer.from([9, 8, 7, 6]);
    const hand = msg('K', i32(31337), k4);
    assert.equal(hand.length, 13);
    assert.deepEqual(encodeBackendKeyData(31337, k4), hand);
    assert.deepEqual(decodeBackendKeyData(hand), { pid: 31337, key: k4 });
    const k32 = Buffer.alloc(32, 0xab);
    const [buf, start, end] = embed(encodeBackendKeyData(77, k32), [1, 2, 3, 4]);
    const d = decodeBackendKeyData(buf, start, end);
    assert.equal(d.pid, 77);
    assert.deepEqual(d.key, k32);
    buf.fill(0);
    assert.deepEqual(d.key, k32, 'key is a copy');
  });

  it('keys shorter than 4 or longer than 256 bytes are rejected', () => {
    for (const n of [0, 3, 257])
      throwsViolation(() => decodeBackendKeyData(msg('K', i32(1), Buffer.alloc(n))), VIOLATION.Malformed, `${n}`);
    assert.equal(decodeBackendKeyData(msg('K', i32(1), Buffer.alloc(256))).key.length, 256);
    throwsViolation(() => decodeBackendKeyData(msg('K', [0, 1])), VIOLATION.Truncated, 'no pid');
  });
});

describe('ReadyForQuery', () => {
  it('each status byte, hand-built and round trip', () => {
    for (const s of [TX.Idle, TX.InTransaction, TX.Failed]) {
      const hand = msg('Z', [s]);
      assert.deepEqual(encodeReadyForQuery(s), hand);
      assert.equal(decodeReadyForQuery(hand), s);
    }
  });

  it('an empty body or a trailing byte is rejected', () => {
    throwsViolation(() => decodeReadyForQuery(msg('Z')), VIOLATION.Truncated);
    throwsViolation(() => decodeReadyForQuery(msg('Z', 'II')), VIOLATION.Malformed);
    // The status byte lies just past `end`.
    const [buf, start] = embed(msg('Z'), [0x49]);
    throwsViolation(() => decodeReadyForQuery(buf, start, start + 5), VIOLATION.Truncated);
  });
});

describe('ErrorResponse / NoticeResponse', () => {
  const allFields = bytes(
    'S',
    cstr('FEHLER'),
    'V',
    cstr('ERROR'),
    'C',
    cstr('42P01'),
    'M',
    cstr('relation "x" does not exist'),
    'D',
    cstr('some detail'),
    'H',
    cstr('a hint'),
    'P',
    cstr('15'),
    'F',
    cstr('parse_relation.c'),
    'L',
    cstr('1449'),
    'R',
    cstr('parserOpenTable'),
    [0],
  );

  it('decodes every field of an ErrorResponse and a NoticeResponse', () => {
    for (const t of ['E', 'N']) {
      const d = decodeNotice(msg(t, allFields));
      assert.equal(d.severity, 'FEHLER');
      assert.equal(d.severityV, 'ERROR');
      assert.equal(d.code, '42P01');
      assert.equal(d.message, 'relation "x" does not exist');
      assert.equal(d.detail, 'some detail');
      assert.equal(d.hint, 'a hint');
      assert.deepEqual(
        [...d.fields],
        [
          ['S', 'FEHLER'],
          ['V', 'ERROR'],
          ['C', '42P01'],
          ['M', 'relation "x" does not exist'],
          ['D', 'some detail'],
          ['H', 'a hint'],
          ['P', '15'],
          ['F', 'parse_relation.c'],
          ['L', '1449'],
          ['R', 'parserOpenTable'],
        ],
      );
    }
  });

  it('an ErrorResponse without a code decodes with code undefined', () => {
    const d = decodeNotice(msg('E', 'S', cstr('FATAL'), 'M', cstr('no code here'), [0]));
    assert.equal(d.code, undefined);
    assert.equal(d.severity, 'FATAL');
    assert.equal(d.message, 'no code here');
    assert.equal(d.detail, undefined);
    assert.equal(d.fields.has('C'), false);
    const empty = decodeNotice(msg('E', [0]));
    assert.deepEqual(empty, { fields: new Map() });
  });

  it('round trips encodeError / encodeNotice, with and without optional fields', () => {
    const e = decodeNotice(encodeError({ severity: 'FATAL', code: '08P01', message: 'invalid frame', detail: 'd', hint: 'h' }));
    assert.equal(e.severity, 'FATAL');
    assert.equal(e.severityV, 'FATAL');
    assert.equal(e.code, '08P01');
    assert.equal(e.message, 'invalid frame');
    assert.equal(e.detail, 'd');
    assert.equal(e.hint, 'h');
    const n = encodeNotice({ severity: 'WARNING', code: '01000', message: 'careful' });
    assert.equal(n[0], BE.NoticeResponse);
    const nd = decodeNotice(n);
    assert.equal(nd.detail, undefined);
    assert.equal(nd.hint, undefined);
    assert.deepEqual(
      n,
      msg('N', 'S', cstr('WARNING'), 'V', cstr('WARNING'), 'C', cstr('01000'), 'M', cstr('careful'), [0]),
      'encoder output matches hand-built bytes',
    );
  });

  it('malformed: missing terminator, string past the end, wrong type, wrong length', () => {
    throwsViolation(() => decodeNotice(msg('E', 'S', cstr('ERROR'))), VIOLATION.Truncated, 'no final NUL');
    const [buf, start, end] = embed(msg('E', 'M', 'oops'), [0, 0]);
    throwsViolation(() => decodeNotice(buf, start, end), VIOLATION.Malformed, 'value NUL outside the frame');
    const [b2, s2, e2] = embed(msg('E', 'S', cstr('ERROR')), [0]);
    throwsViolation(() => decodeNotice(b2, s2, e2), VIOLATION.Truncated, 'terminator outside the frame');
    throwsViolation(() => decodeNotice(msg('E', [0], 'x')), VIOLATION.Malformed, 'trailing');
    throwsViolation(() => decodeNotice(msg('Z', [0])), VIOLATION.Malformed, 'wrong type');
    throwsViolation(() => decodeNotice(msgLen('E', 100, 'M', cstr('x'), [0])), VIOLATION.BadLength, 'length lies');
    throwsViolation(() => decodeNotice(Buffer.alloc(0)), undefined, 'empty buffer');
  });
});

describe('NegotiateProtocolVersion', () => {
  it('hand-built and round trip', () => {
    const hand = msg('v', i32(196608), i32(2), cstr('_pq_.a', '_pq_.b'));
    assert.deepEqual(encodeNegotiateProtocolVersion(0, ['_pq_.a', '_pq_.b']), hand);
    assert.deepEqual(decodeNegotiateProtocolVersion(hand), { minor: 0, unsupported: ['_pq_.a', '_pq_.b'] });
    assert.deepEqual(decodeNegotiateProtocolVersion(encodeNegotiateProtocolVersion(2, [])), { minor: 2, unsupported: [] });
  });

  it('negative or oversized counts, strings past the end and trailing bytes are rejected', () => {
    throwsViolation(() => decodeNegotiateProtocolVersion(msg('v', i32(196608), i32(-1))), VIOLATION.Malformed, 'negative');
    throwsViolation(() => decodeNegotiateProtocolVersion(msg('v', i32(196608), i32(0x7fffffff), cstr('a'))), VIOLATION.Malformed, 'huge');
    throwsViolation(() => decodeNegotiateProtocolVersion(msg('v', i32(196608), i32(2), cstr('a'))), undefined, 'fewer strings');
    throwsViolation(() => decodeNegotiateProtocolVersion(msg('v', i32(196608), i32(0), 'x')), VIOLATION.Malformed, 'trailing');
    const [buf, start, end] = embed(msg('v', i32(196608), i32(1), '_pq_.a'), [0]);
    throwsViolation(() => decodeNegotiateProtocolVersion(buf, start, end), VIOLATION.Malformed, 'NUL outside the frame');
  });
});

describe('frontend encoders', () => {
  it('build the documented bytes', () => {
    assert.deepEqual([...TERMINATE], [0x58, 0, 0, 0, 4]);
    assert.deepEqual(encodeQuery('SELECT 1'), msg('Q', cstr('SELECT 1')));
    assert.deepEqual(encodePassword('pw'), msg('p', cstr('pw')));
    assert.deepEqual(encodeSaslInitial('SCRAM-SHA-256', Buffer.from('n,,n=,r=x')), msg('p', cstr('SCRAM-SHA-256'), i32(9), 'n,,n=,r=x'));
  });
});

// ---------------------------------------------------------------- Reader

describe('Reader bounds', () => {
  // Bytes 2..8 are the "message"; the buffer continues with NULs on both sides.
  const buf = Buffer.from([0, 0, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0, 0, 0, 0]);
  const mk = () => new Reader(buf, 2, 8);

  it('reads inside the bounds', () => {
    const r = mk();
    assert.equal(r.remaining, 6);
    assert.equal(r.byte(), 0x41);
    assert.equal(r.int16(), 0x4243);
    assert.equal(r.position, 5);
    assert.deepEqual(r.bytes(1), Buffer.from('D'));
    assert.deepEqual(r.rest(), Buffer.from('EF'));
    assert.equal(r.remaining, 0);
    r.end();
    assert.deepEqual(r.rest(), Buffer.alloc(0));
    const r2 = new Reader(Buffer.from([0xff, 0xff, 0xff, 0xfe, 0x61, 0]));
    assert.equal(r2.int32(), -2);
    assert.equal(r2.cstring(), 'a');
  });

  it('every method throws ProtocolViolation on over-read, though the buffer has more bytes', () => {
    const at = (n: number) => {
      const r = mk();
      if (n > 0) r.bytes(n);
      return r;
    };
    throwsViolation(() => at(6).byte(), VIOLATION.Truncated, 'byte');
    throwsViolation(() => at(5).int16(), VIOLATION.Truncated, 'int16');
    throwsViolation(() => at(3).int32(), VIOLATION.Truncated, 'int32');
    throwsViolation(() => at(0).bytes(7), VIOLATION.Truncated, 'bytes');
    throwsViolation(() => at(0).bytes(-1), VIOLATION.Truncated, 'negative bytes');
    throwsViolation(() => at(0).cstring(), VIOLATION.Malformed, 'cstring: NUL lies after end');
    throwsViolation(() => at(6).cstring(), VIOLATION.Malformed, 'cstring at end');
    throwsViolation(() => at(2).end(), VIOLATION.Malformed, 'end with bytes left');
    // Exactly at the bound is fine.
    assert.equal(at(4).int16(), 0x4546);
    assert.equal(at(2).int32(), 0x43444546);
  });

  it('rejects bounds outside the buffer', () => {
    throwsViolation(() => new Reader(buf, -1, 4), VIOLATION.BadLength);
    throwsViolation(() => new Reader(buf, 0, buf.length + 1), VIOLATION.BadLength);
    throwsViolation(() => new Reader(buf, 5, 4), VIOLATION.BadLength);
    assert.equal(new Reader(buf, 4, 4).remaining, 0);
  });
});
