// Property tests for the framer and the decoders: arbitrary and adversarial
// bytes, arbitrary chunkings. Never crash, never invent or over-read bytes,
// never desync, and chunking never changes what is reported.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import {
  decodeAuth,
  decodeBackendKeyData,
  decodeNegotiateProtocolVersion,
  decodeNotice,
  decodeParameterStatus,
  decodeReadyForQuery,
  decodeSaslMechanisms,
} from '../../src/protocol/backend.ts';
import { BE, PROTOCOL_3_0, PROTOCOL_3_2, REQUEST_CODE, VALID_BACKEND } from '../../src/protocol/codes.ts';
import { type FrameSink, MessageStream } from '../../src/protocol/framer.ts';
import { decodeStartup } from '../../src/protocol/startup.ts';
import { ProtocolViolation, type ViolationKind } from '../../src/protocol/violation.ts';

const VALID_CODES: number[] = [];
for (let c = 0; c < 256; c++) if (VALID_BACKEND[c] === 1) VALID_CODES.push(c);

function tableOf(codes: readonly number[]): Uint8Array {
  const t = new Uint8Array(256);
  for (const c of codes) t[c] = 1;
  return t;
}

function frame(type: number, body: Uint8Array): Buffer {
  const out = Buffer.alloc(5 + body.length);
  out[0] = type;
  out.writeInt32BE(4 + body.length, 1);
  out.set(body, 5);
  return out;
}

/** Sink that checks every callback's bounds and what it may report, and records it. */
class Checker implements FrameSink {
  out: Buffer[] = [];
  messages: Buffer[] = [];
  violations: ViolationKind[] = [];
  afterViolation = 0;
  inspect: Uint8Array;
  constructor(inspect: Uint8Array) {
    this.inspect = inspect;
  }
  onRun(buf: Buffer, start: number, end: number): void {
    if (this.violations.length > 0) this.afterViolation++;
    assert.ok(Number.isInteger(start) && Number.isInteger(end) && 0 <= start && start <= end && end <= buf.length, 'run bounds');
    this.out.push(Buffer.from(buf.subarray(start, end)));
  }
  onMessage(type: number, buf: Buffer, start: number, end: number): void {
    if (this.violations.length > 0) this.afterViolation++;
    assert.ok(0 <= start && start + 5 <= end && end <= buf.length, 'message bounds');
    assert.equal(buf[start], type);
    assert.equal(buf.readInt32BE(start + 1), end - start - 1, 'one complete frame');
    assert.equal(this.inspect[type], 1, 'only inspected types');
    const m = Buffer.from(buf.subarray(start, end));
    this.out.push(m);
    this.messages.push(m);
  }
  onViolation(kind: ViolationKind): void {
    if (this.violations.length > 0) this.afterViolation++;
    this.violations.push(kind);
  }
  get bytes(): Buffer {
    return Buffer.concat(this.out);
  }
}

function run(input: Buffer, cuts: number[], inspect: Uint8Array, max: number): { c: Checker; s: MessageStream } {
  const c = new Checker(inspect);
  const s = new MessageStream(c, VALID_BACKEND, inspect, max);
  const offsets = [...new Set(cuts.map((x) => x % (input.length + 1)))].sort((a, b) => a - b);
  let prev = 0;
  for (const o of [...offsets, input.length]) {
    s.push(Buffer.from(input.subarray(prev, o)));
    prev = o;
  }
  return { c, s };
}

// Bytes that look like frames often enough to get past the first header.
const byteWithNuls = fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 255 }));
const noise = fc.uint8Array({ maxLength: 40 });
const validFrame = fc.tuple(fc.constantFrom(...VALID_CODES), fc.uint8Array({ maxLength: 300 })).map(([t, b]) => frame(t, b) as Uint8Array);
const lyingFrame = fc
  .tuple(
    fc.oneof(fc.constantFrom(...VALID_CODES), fc.integer({ min: 0, max: 255 })),
    fc.oneof(fc.integer({ min: -8, max: 400 }), fc.integer({ min: -2147483648, max: 2147483647 })),
    fc.uint8Array({ maxLength: 60 }),
  )
  .map(([t, len, b]) => {
    const out = Buffer.alloc(5 + b.length);
    out[0] = t;
    out.writeInt32BE(len, 1);
    out.set(b, 5);
    return out as Uint8Array;
  });
const hostileStream = fc.oneof(
  fc.uint8Array({ maxLength: 600 }),
  fc.array(fc.oneof({ weight: 4, arbitrary: validFrame }, { weight: 1, arbitrary: lyingFrame }, { weight: 1, arbitrary: noise }), {
    maxLength: 12,
  }),
);
const inspectSet = fc.subarray(VALID_CODES);
const cutsArb = fc.array(fc.nat(), { maxLength: 12 });

describe('MessageStream fuzz', () => {
  it('arbitrary bytes in arbitrary chunks: no throw, only a prefix of the input, nothing after a violation', () => {
    fc.assert(
      fc.property(
        hostileStream,
        cutsArb,
        inspectSet,
        fc.oneof(fc.integer({ min: 4, max: 2000 }), fc.constant(1 << 30)),
        (parts, cuts, codes, max) => {
          const input = Array.isArray(parts) ? Buffer.concat(parts) : Buffer.from(parts);
          const inspect = tableOf(codes);
          const { c, s } = run(input, cuts, inspect, max);
          const got = c.bytes;
          assert.ok(got.length <= input.length, 'never more bytes than the input');
          assert.ok(input.subarray(0, got.length).equals(got), 'reported bytes are a prefix of the input');
          assert.ok(c.violations.length <= 1, 'at most one violation');
          assert.equal(c.afterViolation, 0, 'nothing after a violation');
          assert.equal(s.dead, c.violations.length === 1);
          if (c.violations.length === 0) {
            const held = input.length - got.length;
            if (s.atBoundary) assert.equal(held, 0, 'at a boundary nothing is held');
            // Only a partial header or a partial inspected frame may be held back.
            if (held >= 5) {
              const t = input[got.length] as number;
              assert.equal(inspect[t], 1, 'held bytes start an inspected frame');
              assert.ok(held < input.readInt32BE(got.length + 1) + 1, 'held frame is incomplete');
            }
          }
          // Chunking changes nothing: the same input in one piece reports the same.
          const whole = run(input, [], inspect, max).c;
          assert.ok(whole.bytes.equals(got), 'same bytes as a single chunk');
          assert.deepEqual(whole.messages, c.messages, 'same messages as a single chunk');
          assert.deepEqual(whole.violations, c.violations, 'same violation as a single chunk');
        },
      ),
      { numRuns: 600 },
    );
  });

  it('valid frame sequences in random chunks are reproduced exactly, with no violation', () => {
    const frames = fc.array(
      fc.tuple(fc.constantFrom(...VALID_CODES), fc.integer({ min: 0, max: 2000 }), fc.integer({ min: 0, max: 255 })),
      { maxLength: 16 },
    );
    fc.assert(
      fc.property(frames, cutsArb, inspectSet, (specs, cuts, codes) => {
        const list = specs.map(([t, n, fill]) => {
          const body = Buffer.alloc(n, fill);
          // A few bytes that look like headers inside the body must not confuse the framer.
          if (n >= 5) body.writeInt32BE(-1, 1);
          return frame(t, body);
        });
        const input = Buffer.concat(list);
        const inspect = tableOf(codes);
        const { c, s } = run(input, cuts, inspect, 1 << 30);
        assert.deepEqual(c.violations, []);
        assert.ok(c.bytes.equals(input), 'input reproduced exactly');
        assert.deepEqual(
          c.messages,
          list.filter((f) => inspect[f[0] as number] === 1),
        );
        assert.equal(s.atBoundary, true);
      }),
      { numRuns: 250 },
    );
  });
});

// ---------------------------------------------------------------- decoders

type Decoder = (buf: Buffer, start: number, end: number) => unknown;

/** Outcome of a decode, comparable across calls. */
function outcome(fn: () => unknown): { ok: true; value: unknown } | { ok: false; kind: ViolationKind } {
  try {
    return { ok: true, value: fn() };
  } catch (e) {
    if (!(e instanceof ProtocolViolation)) throw new Error(`not a ProtocolViolation: ${String(e)}`, { cause: e });
    return { ok: false, kind: e.kind };
  }
}

/** Frame-ish bytes for a decoder: its own type byte and a true length most of the time. */
function frameFor(type: number) {
  return fc
    .tuple(
      fc.oneof({ weight: 5, arbitrary: fc.constant(type) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 255 }) }),
      fc.oneof({ weight: 5, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fc.integer({ min: -3, max: 80 }) }),
      fc.array(byteWithNuls, { maxLength: 64 }),
    )
    .map(([t, len, body]) => {
      const out = Buffer.alloc(5 + body.length);
      out[0] = t;
      out.writeInt32BE(len ?? 4 + body.length, 1);
      out.set(body, 5);
      return out;
    });
}

const surround = fc.tuple(fc.array(byteWithNuls, { maxLength: 8 }), fc.array(byteWithNuls, { maxLength: 8 }));

/** Decodes in place inside a larger buffer and on an exact copy: both must agree (so no read went past `end`). */
function checkDecoder(decode: Decoder, frames: fc.Arbitrary<Buffer>, numRuns = 400): void {
  fc.assert(
    fc.property(frames, surround, fc.nat(6), (f, [pre, post], trim) => {
      const big = Buffer.concat([Buffer.from(pre), f, Buffer.from(post)]);
      const start = pre.length;
      // Sometimes cut the frame short inside the buffer (the rest is still there).
      const end = start + Math.max(0, f.length - (trim > 4 ? trim - 4 : 0));
      const inPlace = outcome(() => decode(big, start, end));
      const copy = Buffer.from(big.subarray(start, end));
      const alone = outcome(() => decode(copy, 0, copy.length));
      assert.deepEqual(inPlace, alone, 'same result in place and on an exact copy');
    }),
    { numRuns },
  );
}

describe('decoder fuzz: return or throw ProtocolViolation, never read past end', () => {
  it('decodeAuth', () => checkDecoder(decodeAuth, frameFor(BE.Authentication)));
  it('decodeParameterStatus', () => checkDecoder(decodeParameterStatus, frameFor(BE.ParameterStatus)));
  it('decodeBackendKeyData', () => checkDecoder(decodeBackendKeyData, frameFor(BE.BackendKeyData)));
  it('decodeReadyForQuery', () => checkDecoder(decodeReadyForQuery, frameFor(BE.ReadyForQuery)));
  it('decodeNotice (E and N)', () => {
    checkDecoder(decodeNotice, frameFor(BE.ErrorResponse));
    checkDecoder(decodeNotice, frameFor(BE.NoticeResponse));
  });
  it('decodeNegotiateProtocolVersion', () => checkDecoder(decodeNegotiateProtocolVersion, frameFor(BE.NegotiateProtocolVersion)));

  it('decodeSaslMechanisms on a view', () => {
    checkDecoder(
      (buf, start, end) => decodeSaslMechanisms(buf.subarray(start, end)),
      fc.array(byteWithNuls, { maxLength: 60 }).map((a) => Buffer.from(a)),
    );
  });

  it('decodeStartup', () => {
    const code = fc.oneof(
      fc.constantFrom(REQUEST_CODE.SSL, REQUEST_CODE.GSSENC, REQUEST_CODE.Cancel, PROTOCOL_3_0, PROTOCOL_3_2),
      fc.integer({ min: -2147483648, max: 2147483647 }),
    );
    const packets = fc
      .tuple(
        fc.oneof({ weight: 5, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fc.integer({ min: -3, max: 300 }) }),
        code,
        fc.array(byteWithNuls, { maxLength: 300 }),
      )
      .map(([len, c, body]) => {
        const out = Buffer.alloc(8 + body.length);
        out.writeInt32BE(len ?? out.length, 0);
        out.writeInt32BE(c, 4);
        out.set(body, 8);
        return out;
      });
    checkDecoder((buf, start, end) => decodeStartup(buf.subarray(start, end)), packets, 800);
    // Pure noise, too.
    checkDecoder(
      (buf, start, end) => decodeStartup(buf.subarray(start, end)),
      fc.uint8Array({ maxLength: 40 }).map((a) => Buffer.from(a)),
    );
  });
});
