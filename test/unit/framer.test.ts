// Framing, byte by byte: startup packet lengths, and the typed-message stream
// split at every offset. The invariant behind most tests: the concatenation of
// everything the stream reports (runs and inspected messages, in callback
// order) is the input, byte for byte, with nothing lost, duplicated or moved.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { WriteBatch } from '../../src/protocol/coalesce.ts';
import { BE, MAX_STARTUP_PACKET, VALID_BACKEND } from '../../src/protocol/codes.ts';
import { BAD_LENGTH, type FrameSink, MessageStream, NEED_MORE, startupFrame, TOO_LARGE } from '../../src/protocol/framer.ts';
import { VIOLATION, type ViolationKind } from '../../src/protocol/violation.ts';

// ---------------------------------------------------------------- helpers

function frame(type: number | string, body: Buffer | number = 0): Buffer {
  const b = typeof body === 'number' ? Buffer.alloc(body, 0x61) : body;
  const out = Buffer.alloc(5 + b.length);
  out[0] = typeof type === 'string' ? type.charCodeAt(0) : type;
  out.writeInt32BE(4 + b.length, 1);
  b.copy(out, 5);
  return out;
}

/** A frame with an arbitrary (possibly lying) length field and no body. */
function header(type: number | string, len: number): Buffer {
  const out = Buffer.alloc(5);
  out[0] = typeof type === 'string' ? type.charCodeAt(0) : type;
  out.writeInt32BE(len, 1);
  return out;
}

function table(...codes: (number | string)[]): Uint8Array {
  const t = new Uint8Array(256);
  for (const c of codes) t[typeof c === 'string' ? c.charCodeAt(0) : c] = 1;
  return t;
}

type Event =
  | { ev: 'run'; bytes: Buffer; buf: Buffer }
  | { ev: 'msg'; type: number; bytes: Buffer }
  | { ev: 'violation'; kind: ViolationKind; detail: string };

/** Records every callback (copies the bytes: views may be of reused memory) and checks bounds. */
class Recorder implements FrameSink {
  events: Event[] = [];
  inspect: Uint8Array;
  onMessageHook: ((type: number) => void) | undefined;
  constructor(inspect: Uint8Array) {
    this.inspect = inspect;
  }
  onRun(buf: Buffer, start: number, end: number): void {
    assert.ok(Number.isInteger(start) && Number.isInteger(end), 'integer bounds');
    assert.ok(0 <= start && start <= end && end <= buf.length, `run [${start}, ${end}) inside a buffer of ${buf.length}`);
    this.events.push({ ev: 'run', bytes: Buffer.from(buf.subarray(start, end)), buf });
  }
  onMessage(type: number, buf: Buffer, start: number, end: number): void {
    assert.ok(0 <= start && start + 5 <= end && end <= buf.length, `message [${start}, ${end}) inside a buffer of ${buf.length}`);
    assert.equal(buf[start], type, 'type argument matches the frame');
    assert.equal(buf.readInt32BE(start + 1), end - start - 1, 'exactly one complete frame');
    this.events.push({ ev: 'msg', type, bytes: Buffer.from(buf.subarray(start, end)) });
    this.onMessageHook?.(type);
  }
  onViolation(kind: ViolationKind, detail: string): void {
    this.events.push({ ev: 'violation', kind, detail });
  }
  /** Every reported byte, in callback order. */
  bytes(): Buffer {
    return Buffer.concat(this.events.flatMap((e) => (e.ev === 'violation' ? [] : [e.bytes])));
  }
  messages(): Buffer[] {
    return this.events.flatMap((e) => (e.ev === 'msg' ? [e.bytes] : []));
  }
  violations(): { kind: ViolationKind; detail: string }[] {
    return this.events.flatMap((e) => (e.ev === 'violation' ? [{ kind: e.kind, detail: e.detail }] : []));
  }
}

function makeStream(inspect: Uint8Array, max = 1 << 30): { stream: MessageStream; rec: Recorder } {
  const rec = new Recorder(inspect);
  const stream = new MessageStream(rec, VALID_BACKEND, inspect, max);
  return { stream, rec };
}

/** Cuts `input` at the given offsets into copies (so nothing past a chunk's end is reachable). */
function cut(input: Buffer, offsets: number[]): Buffer[] {
  const out: Buffer[] = [];
  let prev = 0;
  for (const o of [...offsets, input.length]) {
    out.push(Buffer.from(input.subarray(prev, o)));
    prev = o;
  }
  return out;
}

// Server-side codes Postern inspects in this scenario; '1' (ParseComplete) has an empty body.
const INSPECT = table('R', 'S', 'K', 'Z', 'E', '1');

function kv(...parts: string[]): Buffer {
  return Buffer.from(parts.map((p) => `${p}\0`).join(''), 'utf8');
}

/** A realistic ~300-byte server stream: startup replies, a query result, an error. */
function smallFrames(): Buffer[] {
  const key = Buffer.alloc(8);
  key.writeInt32BE(4242, 0);
  key.writeInt32BE(0x7fabcdef, 4);
  const auth = Buffer.alloc(4);
  const row = (a: string, b: string) => {
    const f = Buffer.alloc(2 + 4 + a.length + 4 + b.length);
    let o = f.writeInt16BE(2, 0);
    o = f.writeInt32BE(a.length, o);
    o += f.write(a, o);
    o = f.writeInt32BE(b.length, o);
    f.write(b, o);
    return f;
  };
  return [
    frame('R', auth), // AuthenticationOk, inspected
    frame('S', kv('server_version', '17.2')), // inspected
    frame('S', kv('client_encoding', 'UTF8')),
    frame('K', key), // inspected
    frame('Z', Buffer.from('I')),
    frame('1'), // ParseComplete: inspected, empty body
    frame('2'), // BindComplete: not inspected, empty body
    frame('T', Buffer.concat([Buffer.from([0, 2]), kv('id'), Buffer.alloc(18), kv('name'), Buffer.alloc(18)])),
    frame('D', row('1', 'alice')),
    frame('D', row('2', 'bob')),
    frame('D', row('3', 'carol, with a longer value that spans a few more bytes')),
    frame('n'), // NoData: empty, not inspected
    frame('C', kv('SELECT 3')),
    frame(
      'E',
      Buffer.concat([Buffer.from('S'), kv('ERROR'), Buffer.from('C'), kv('42P01'), Buffer.from('M'), kv('nope'), Buffer.from([0])]),
    ),
    frame('Z', Buffer.from('E')),
  ];
}

function inspected(frames: Buffer[], inspect: Uint8Array): Buffer[] {
  return frames.filter((f) => inspect[f[0] as number] === 1);
}

function boundaries(frames: Buffer[]): Set<number> {
  const s = new Set<number>([0]);
  let o = 0;
  for (const f of frames) {
    o += f.length;
    s.add(o);
  }
  return s;
}

/** Feeds chunks and checks invariants (a)-(d); returns the recorder for extra checks. */
function feedAndCheck(input: Buffer, frames: Buffer[], chunks: Buffer[], label: string): Recorder {
  const { stream, rec } = makeStream(INSPECT);
  for (const c of chunks) stream.push(c);
  assert.deepEqual(rec.violations(), [], `${label}: no violation`);
  const got = rec.bytes();
  assert.ok(got.equals(input), `${label}: reported bytes equal the input (${got.length} vs ${input.length})`);
  assert.deepEqual(rec.messages(), inspected(frames, INSPECT), `${label}: one onMessage per inspected frame, none for others`);
  assert.equal(stream.atBoundary, true, `${label}: at a boundary at the end`);
  assert.equal(stream.dead, false);
  return rec;
}

// ---------------------------------------------------------------- startupFrame

describe('startupFrame', () => {
  const pkt = (len: number, total = len) => {
    const b = Buffer.alloc(Math.max(total, 4), 0x20);
    b.writeInt32BE(len, 0);
    return b;
  };

  it('returns the length of a complete packet, also at an offset and with bytes after it', () => {
    assert.equal(startupFrame(pkt(8), 0, 8), 8);
    const p = pkt(40);
    assert.equal(startupFrame(p, 0, p.length), 40);
    const big = Buffer.concat([Buffer.alloc(7, 0xff), p, Buffer.alloc(100, 0)]);
    assert.equal(startupFrame(big, 7, big.length), 40);
    assert.equal(startupFrame(big, 7, 7 + 40), 40);
  });

  it('answers NEED_MORE for every truncation of a packet', () => {
    const p = pkt(57);
    for (let n = 0; n < 57; n++) assert.equal(startupFrame(p, 0, n), NEED_MORE, `${n} bytes`);
    // Truncation measured from an offset, with the buffer itself longer than `end`.
    const big = Buffer.concat([Buffer.alloc(3), p]);
    for (let n = 0; n < 57; n++) assert.equal(startupFrame(big, 3, 3 + n), NEED_MORE, `${n} bytes at offset 3`);
    assert.equal(startupFrame(big, 3, 60), 57);
  });

  it('answers BAD_LENGTH for lengths below 8, including 0 and negatives', () => {
    for (const len of [7, 4, 1, 0, -1, -8, -2147483648]) {
      const b = Buffer.alloc(16);
      b.writeInt32BE(len, 0);
      assert.equal(startupFrame(b, 0, 16), BAD_LENGTH, `length ${len}`);
      // Known as soon as the length field is in, before the body.
      assert.equal(startupFrame(b, 0, 4), BAD_LENGTH, `length ${len}, only the length field`);
    }
  });

  it('answers TOO_LARGE above 10,000 bytes before the body arrives, and accepts exactly 10,000', () => {
    assert.equal(MAX_STARTUP_PACKET, 10_000);
    for (const len of [10_001, 65_536, 0x7fffffff]) {
      assert.equal(startupFrame(pkt(len, 4), 0, 4), TOO_LARGE, `length ${len}`);
    }
    const max = pkt(10_000);
    assert.equal(startupFrame(max, 0, 10_000), 10_000);
    assert.equal(startupFrame(max, 0, 9_999), NEED_MORE);
    assert.equal(startupFrame(max, 0, 4), NEED_MORE);
  });

  it('never throws even when fewer than 4 bytes remain at the end of the buffer', () => {
    const b = Buffer.from([0, 0, 0]);
    assert.equal(startupFrame(b, 0, 3), NEED_MORE);
    assert.equal(startupFrame(b, 3, 3), NEED_MORE);
  });
});

// ---------------------------------------------------------------- MessageStream: splits

describe('MessageStream: splitting', () => {
  const frames = smallFrames();
  const input = Buffer.concat(frames);
  const edges = boundaries(frames);

  it('uses a ~300 byte stream of mixed inspected and forwarded frames', () => {
    assert.ok(input.length > 250 && input.length < 400, `stream is ${input.length} bytes`);
    assert.ok(inspected(frames, INSPECT).length >= 5);
    assert.ok(frames.length - inspected(frames, INSPECT).length >= 5);
  });

  it('one chunk', () => {
    const rec = feedAndCheck(input, frames, [Buffer.from(input)], 'whole');
    // Consecutive uninspected frames go out as one run: '2' T D D D n C between '1' and 'E'.
    const runs = rec.events.filter((e) => e.ev === 'run');
    assert.equal(runs.length, 1, 'one run for the contiguous forwarded frames');
  });

  it('every two-chunk split: nothing lost, duplicated or reordered; atBoundary tracks frame edges', () => {
    for (let i = 0; i <= input.length; i++) {
      const [a, b] = cut(input, [i]) as [Buffer, Buffer];
      const { stream, rec } = makeStream(INSPECT);
      stream.push(a);
      assert.equal(stream.atBoundary, edges.has(i), `split ${i}: atBoundary after the first chunk`);
      stream.push(b);
      assert.deepEqual(rec.violations(), [], `split ${i}`);
      assert.ok(rec.bytes().equals(input), `split ${i}: bytes reproduced`);
      assert.deepEqual(rec.messages(), inspected(frames, INSPECT), `split ${i}: messages`);
      assert.equal(stream.atBoundary, true, `split ${i}: boundary at end`);
    }
  });

  it('three-chunk splits', () => {
    let n = 0;
    for (let i = 0; i <= input.length; i += 7) {
      for (let j = i; j <= input.length; j += 11) {
        feedAndCheck(input, frames, cut(input, [i, j]), `split ${i}/${j}`);
        n++;
      }
    }
    // Splits inside one header: every pair of cuts within the 5-byte header of each frame.
    for (const e of edges) {
      for (let a = 1; a < 5; a++) {
        for (let b = a; b <= 5; b++) {
          if (e + b > input.length) continue;
          feedAndCheck(input, frames, cut(input, [e + a, e + b]), `header split ${e}+${a}/${b}`);
          n++;
        }
      }
    }
    assert.ok(n > 500);
  });

  it('one byte at a time, with empty chunks in between', () => {
    const chunks: Buffer[] = [];
    for (let i = 0; i < input.length; i++) {
      chunks.push(Buffer.from([input[i] as number]));
      if (i % 3 === 0) chunks.push(Buffer.alloc(0));
    }
    feedAndCheck(input, frames, chunks, 'bytewise');
  });

  it('a 200 kB DataRow-like frame among small frames, under several chunkings', () => {
    const big = frame('D', Buffer.alloc(200 * 1024, 0x5a));
    big.writeInt16BE(1, 5);
    const bigError = frame('E', Buffer.concat([Buffer.from('M'), kv('x'.repeat(150_000)), Buffer.from([0])]));
    const all = [...frames.slice(0, 8), big, ...frames.slice(8), bigError, frame('Z', Buffer.from('I'))];
    const data = Buffer.concat(all);
    for (const size of [1000, 4096, 65_536, 100_003, data.length]) {
      const offsets: number[] = [];
      for (let o = size; o < data.length; o += size) offsets.push(o);
      const { stream, rec } = makeStream(INSPECT);
      for (const c of cut(data, offsets)) stream.push(c);
      assert.deepEqual(rec.violations(), []);
      assert.ok(rec.bytes().equals(data), `chunk size ${size}`);
      assert.deepEqual(rec.messages(), inspected(all, INSPECT), `chunk size ${size}: messages`);
      assert.equal(rec.messages().at(-2)?.length, bigError.length, 'the large inspected frame arrives whole');
      assert.equal(stream.atBoundary, true);
    }
    // Splits right around the large frame's edges.
    const start = Buffer.concat(all.slice(0, 8)).length;
    for (const o of [start - 1, start, start + 1, start + 4, start + 5, start + 6, start + big.length - 1, start + big.length]) {
      feedAndCheck(data, all, cut(data, [o]), `split ${o} near the large frame`);
    }
  });
});

// ---------------------------------------------------------------- MessageStream: streaming

describe('MessageStream: large uninspected messages stream through', () => {
  it('a 1 MB message fed in 64 kB chunks is forwarded chunk by chunk, as views of the chunks', () => {
    const CHUNK = 64 * 1024;
    const head = frame('Z', Buffer.from('I')); // inspected, 6 bytes
    const body = Buffer.alloc(1024 * 1024 - 5);
    for (let i = 0; i < body.length; i++) body[i] = i & 0xff;
    const big = frame('D', body); // exactly 1 MB
    const tail = frame('Z', Buffer.from('T'));
    const data = Buffer.concat([head, big, tail]);
    const chunks = cut(
      data,
      Array.from({ length: Math.floor(data.length / CHUNK) }, (_, i) => (i + 1) * CHUNK),
    );
    assert.equal(chunks.length, 17);
    const { stream, rec } = makeStream(INSPECT);
    let pushed = 0;
    for (const [i, c] of chunks.entries()) {
      const before = rec.events.length;
      stream.push(c);
      pushed += c.length;
      if (i === chunks.length - 1) break;
      // Every chunk boundary lies inside the DataRow: everything pushed so far is already reported.
      assert.equal(rec.bytes().length, pushed, `after chunk ${i}: nothing held back`);
      assert.equal(stream.atBoundary, false, `after chunk ${i}: still inside the message`);
      const fresh = rec.events.slice(before).filter((e) => e.ev === 'run');
      assert.ok(fresh.length >= 1, `chunk ${i} produced a run before the message completed`);
      if (i > 0) assert.equal(fresh[0]?.ev === 'run' && fresh[0].buf, c, `chunk ${i} forwarded as a view of itself (no copy)`);
    }
    assert.ok(rec.bytes().equals(data));
    assert.deepEqual(rec.messages(), [head, tail]);
    assert.equal(stream.atBoundary, true);
  });
});

// ---------------------------------------------------------------- MessageStream: violations

describe('MessageStream: violations', () => {
  const prefix = [frame('Z', Buffer.from('I')), frame('D', 20), frame('C', kv('SELECT 1')), frame('S', kv('a', 'b'))];
  const prefixBytes = Buffer.concat(prefix);
  const afterwards = Buffer.concat([frame('Z', Buffer.from('I')), frame('D', 10)]);

  const cases: { name: string; bad: Buffer; kind: ViolationKind; max?: number }[] = [
    { name: 'invalid type byte 0x00', bad: header(0x00, 8), kind: VIOLATION.BadType },
    { name: "invalid type byte 'Q' (a frontend code)", bad: header('Q', 8), kind: VIOLATION.BadType },
    { name: 'length 3', bad: header('D', 3), kind: VIOLATION.BadLength },
    { name: 'length 0', bad: header('Z', 0), kind: VIOLATION.BadLength },
    { name: 'negative length -1', bad: header('D', -1), kind: VIOLATION.BadLength },
    { name: 'negative length -2^31', bad: header('Z', -2147483648), kind: VIOLATION.BadLength },
    { name: 'length above maxMessage', bad: header('D', 1001), kind: VIOLATION.TooLarge, max: 1000 },
    { name: 'inspected type above maxMessage', bad: header('E', 0x7fffffff), kind: VIOLATION.TooLarge, max: 1000 },
  ];

  for (const c of cases) {
    it(`${c.name}: reported once, after the preceding frames, at every split`, () => {
      const input = Buffer.concat([prefixBytes, c.bad, Buffer.alloc(12, 0x44)]);
      for (let i = 0; i <= input.length; i++) {
        const rec = new Recorder(INSPECT);
        const stream = new MessageStream(rec, VALID_BACKEND, INSPECT, c.max ?? 1 << 30);
        for (const chunk of cut(input, [i])) stream.push(chunk);
        const v = rec.violations();
        assert.equal(v.length, 1, `split ${i}: exactly one violation`);
        assert.equal(v[0]?.kind, c.kind, `split ${i}: kind`);
        assert.equal(typeof v[0]?.detail, 'string');
        assert.equal(rec.events.at(-1)?.ev, 'violation', `split ${i}: the violation is the last event`);
        assert.ok(rec.bytes().equals(prefixBytes), `split ${i}: the complete frames before it were all emitted, nothing after`);
        assert.deepEqual(rec.messages(), inspected(prefix, INSPECT));
        assert.equal(stream.dead, true);
        // Further pushes are ignored.
        const n = rec.events.length;
        stream.push(Buffer.from(afterwards));
        stream.push(Buffer.from(c.bad));
        assert.equal(rec.events.length, n, `split ${i}: nothing after the violation`);
      }
    });
  }

  it('accepts a length of exactly maxMessage', () => {
    const ok = frame('D', 995); // length field 999
    const edge = frame('D', 996); // length field 1000 == max
    const { stream, rec } = makeStream(INSPECT, 1000);
    stream.push(Buffer.concat([ok, edge]));
    assert.deepEqual(rec.violations(), []);
    assert.equal(rec.bytes().length, ok.length + edge.length);
    stream.push(header('E', 1001));
    assert.equal(rec.violations()[0]?.kind, VIOLATION.TooLarge);
  });

  it('a header split in three pieces that turns out invalid reports once', () => {
    const { stream, rec } = makeStream(INSPECT);
    stream.push(Buffer.concat([frame('Z', Buffer.from('I')), Buffer.from([0x44])])); // 'D' then ...
    stream.push(Buffer.from([0xff, 0xff]));
    assert.deepEqual(rec.violations(), [], 'not yet decidable');
    assert.equal(stream.atBoundary, false);
    stream.push(Buffer.from([0xff, 0xf0, 0x44, 0, 0, 0, 4]));
    assert.deepEqual(
      rec.violations().map((v) => v.kind),
      [VIOLATION.BadLength],
    );
    assert.ok(rec.bytes().equals(frame('Z', Buffer.from('I'))));
  });
});

// ---------------------------------------------------------------- MessageStream: inspect switching, kill

describe('MessageStream: setInspect and kill', () => {
  const r = frame('R', Buffer.alloc(4));
  const s1 = frame('S', kv('a', '1'));
  const s2 = frame('S', kv('b', '2'));
  const z = frame('Z', Buffer.from('I'));

  it('setInspect between pushes applies to the next frame', () => {
    const { stream, rec } = makeStream(table('S'));
    stream.push(Buffer.concat([r, s1]));
    stream.setInspect(table('R'));
    stream.push(Buffer.concat([s2, r]));
    assert.deepEqual(rec.messages(), [s1, r]);
    assert.ok(rec.bytes().equals(Buffer.concat([r, s1, s2, r])));
  });

  it('setInspect called from onMessage applies to the next frame of the same chunk', () => {
    const { stream, rec } = makeStream(table('R', 'S'));
    rec.onMessageHook = (type) => {
      if (type === BE.Authentication) stream.setInspect(table('Z'));
    };
    const input = Buffer.concat([r, s1, s2, z]);
    stream.push(input);
    assert.deepEqual(rec.messages(), [r, z], 'S frames after the switch are forwarded, Z is now inspected');
    assert.ok(rec.bytes().equals(input));
  });

  it('setInspect while a frame is half way applies from the next frame', () => {
    const { stream, rec } = makeStream(table('S'));
    const input = Buffer.concat([s1, s2, z]);
    stream.push(input.subarray(0, s1.length + 3)); // inside s2's header
    stream.setInspect(table('Z'));
    stream.push(input.subarray(s1.length + 3));
    assert.deepEqual(rec.messages(), [s1, z]);
    assert.ok(rec.bytes().equals(input));
  });

  it('kill() from onMessage stops the rest of the chunk and later pushes', () => {
    const { stream, rec } = makeStream(table('R', 'S'));
    rec.onMessageHook = (type) => {
      if (type === BE.Authentication) stream.kill();
    };
    stream.push(Buffer.concat([frame('D', 3), r, s1, frame('D', 3)]));
    stream.push(z);
    assert.equal(stream.dead, true);
    assert.deepEqual(rec.messages(), [r]);
    assert.ok(rec.bytes().equals(Buffer.concat([frame('D', 3), r])));
    assert.deepEqual(rec.violations(), []);
  });
});

// ---------------------------------------------------------------- MessageStream: peek

/** Records peeks apart from runs and messages; checks a peeked frame's bytes already went on in a run (or go on in this chunk's run). */
class PeekRecorder extends Recorder {
  peeks: Buffer[] = [];
  onPeek(type: number, buf: Buffer, start: number, end: number): void {
    assert.ok(0 <= start && start + 5 <= end && end <= buf.length, `peek [${start}, ${end}) inside a buffer of ${buf.length}`);
    assert.equal(buf[start], type, 'type argument matches the frame');
    assert.equal(buf.readInt32BE(start + 1), end - start - 1, 'exactly one complete frame');
    this.peeks.push(Buffer.from(buf.subarray(start, end)));
  }
}

describe('MessageStream: peek', () => {
  const frames = smallFrames();
  const input = Buffer.concat(frames);
  // 'C' and 'D' are forwarded frames; 'Z' is inspected, so peeking it changes nothing.
  const PEEK = table('C', 'D', 'Z');
  const expectedPeeks = frames.filter((f) => PEEK[f[0] as number] === 1 && INSPECT[f[0] as number] !== 1);

  function feed(chunks: Buffer[]): { stream: MessageStream; rec: PeekRecorder } {
    const rec = new PeekRecorder(INSPECT);
    const stream = new MessageStream(rec, VALID_BACKEND, INSPECT, 1 << 30);
    stream.setPeek(PEEK);
    for (const c of chunks) stream.push(c);
    return { stream, rec };
  }

  it('peeked frames stay in their runs: one run for the whole forwarded block', () => {
    const { rec } = feed([Buffer.from(input)]);
    assert.ok(rec.bytes().equals(input));
    assert.equal(rec.events.filter((e) => e.ev === 'run').length, 1);
    assert.deepEqual(rec.peeks, expectedPeeks);
    assert.deepEqual(rec.messages(), inspected(frames, INSPECT), 'inspected frames are not peeked');
  });

  it('every two- and three-chunk split: each peeked frame shown once, whole, and every byte forwarded once', () => {
    for (let i = 0; i <= input.length; i++) {
      for (let j = i; j <= input.length; j += 5) {
        const { stream, rec } = feed(cut(input, [i, j]));
        assert.ok(rec.bytes().equals(input), `split ${i}/${j}: bytes reproduced`);
        assert.deepEqual(rec.peeks, expectedPeeks, `split ${i}/${j}: peeks`);
        assert.deepEqual(rec.messages(), inspected(frames, INSPECT), `split ${i}/${j}: messages`);
        assert.equal(stream.atBoundary, true);
      }
    }
  });

  it('one byte at a time', () => {
    const { rec } = feed([...input].map((b) => Buffer.from([b])));
    assert.ok(rec.bytes().equals(input));
    assert.deepEqual(rec.peeks, expectedPeeks);
  });

  it('a straddling peeked frame is shown after its last bytes were forwarded', () => {
    const c = frame('C', kv('SELECT 12345'));
    const rec = new PeekRecorder(table());
    const order: string[] = [];
    const stream = new MessageStream(
      {
        onRun: (b, s, e) => {
          rec.onRun(b, s, e);
          order.push(`run:${e - s}`);
        },
        onMessage: (t, b, s, e) => rec.onMessage(t, b, s, e),
        onPeek: (t, b, s, e) => {
          rec.onPeek(t, b, s, e);
          order.push(`peek:${e - s}`);
        },
        onViolation: (k, d) => rec.onViolation(k, d),
      },
      VALID_BACKEND,
      table(),
      1 << 30,
    );
    stream.setPeek(table('C'));
    stream.push(c.subarray(0, 7));
    stream.push(c.subarray(7));
    assert.deepEqual(rec.peeks, [c]);
    assert.deepEqual(order, ['run:7', `run:${c.length - 7}`, `peek:${c.length}`]);
  });

  it('setPeek(null) stops peeking; a peek table needs a sink with onPeek', () => {
    const { stream, rec } = feed([]);
    stream.setPeek(null);
    stream.push(Buffer.from(input));
    assert.deepEqual(rec.peeks, []);
    const plain = makeStream(INSPECT).stream;
    assert.throws(() => plain.setPeek(PEEK), /onPeek/);
  });
});

// ---------------------------------------------------------------- write batches

describe('WriteBatch: frames of one chunk written back as runs', () => {
  class Sink {
    readonly writes: Buffer[] = [];
    writableNeedDrain = false;
    readonly hwm: number;
    /** cork() depth now, and the writes made while corked (what one writev would carry). */
    corked = 0;
    corkedWrites = 0;
    constructor(hwm = Number.POSITIVE_INFINITY) {
      this.hwm = hwm;
    }
    write(buf: Buffer): boolean {
      this.writes.push(Buffer.from(buf));
      if (this.corked > 0) this.corkedWrites++;
      return this.writes.reduce((n, b) => n + b.length, 0) < this.hwm;
    }
    cork(): void {
      this.corked++;
    }
    uncork(): void {
      assert.ok(this.corked > 0, 'uncork without cork');
      this.corked--;
    }
  }

  it('contiguous views of one chunk become one write; the bytes are the input in order, whatever the cuts', () => {
    for (let seed = 1; seed <= 200; seed++) {
      let x = seed;
      const rnd = (n: number) => {
        x = (x * 1103515245 + 12345) % 2147483648;
        return x % n;
      };
      const chunk = Buffer.alloc(200 + rnd(300));
      for (let i = 0; i < chunk.length; i++) chunk[i] = rnd(256);
      const sink = new Sink();
      const batch = new WriteBatch(sink, 1_000_000);
      batch.begin();
      const expected: Buffer[] = [];
      let at = 0;
      let breaks = 0;
      while (at < chunk.length) {
        const end = Math.min(chunk.length, at + 1 + rnd(40));
        if (rnd(5) === 0) {
          // Something of Postern's own between two frames: its own buffer, never merged with the chunk.
          const own = Buffer.from(`own${seed}`);
          batch.write(own);
          expected.push(own);
          breaks++;
        }
        const skip = rnd(7) === 0 && end < chunk.length;
        if (!skip) {
          batch.write(chunk.subarray(at, end));
          expected.push(chunk.subarray(at, end));
        } else breaks++;
        at = end;
      }
      batch.end();
      assert.equal(sink.corked, 0, 'the sink is uncorked when the batch ends');
      assert.equal(sink.corkedWrites, sink.writes.length === 1 ? 0 : sink.writes.length, 'several writes of one batch are corked into one');
      assert.deepEqual(Buffer.concat(sink.writes), Buffer.concat(expected));
      assert.ok(sink.writes.length <= 2 * breaks + 1, `${sink.writes.length} writes for ${breaks} breaks`);
    }
  });

  it('ranges join without views of their own; one run is one plain write, flush() sends it mid-batch', () => {
    const sink = new Sink();
    const batch = new WriteBatch(sink);
    const chunk = Buffer.from('0123456789');
    batch.begin();
    batch.writeRange(chunk, 0, 3);
    batch.writeRange(chunk, 3, 5);
    batch.write(chunk.subarray(5, 7));
    batch.flush();
    assert.deepEqual(
      sink.writes.map((w) => w.toString()),
      ['0123456'],
    );
    assert.equal(sink.corked, 0, 'a single run needs no cork');
    batch.writeRange(chunk, 7, 8);
    batch.writeRange(chunk, 9, 10);
    assert.equal(batch.open, true);
    batch.end();
    assert.deepEqual(
      sink.writes.map((w) => w.toString()),
      ['0123456', '7', '9'],
    );
    assert.equal(sink.corkedWrites, 2);
    assert.equal(sink.corked, 0);
    batch.writeRange(chunk, 2, 4);
    assert.equal(sink.writes.at(-1)?.toString(), '23', 'outside a batch a range is written at once');
  });

  it('writes go straight through outside a batch, and a dropped batch writes nothing more', () => {
    const sink = new Sink();
    const batch = new WriteBatch(sink);
    const chunk = Buffer.from('abcdef');
    batch.write(chunk.subarray(0, 2));
    batch.write(chunk.subarray(2, 4));
    assert.equal(sink.writes.length, 2);
    batch.begin();
    batch.write(chunk.subarray(4, 6));
    batch.drop();
    batch.end();
    assert.equal(Buffer.concat(sink.writes).toString(), 'abcd');
  });

  it('backpressure: a run flushes at the limit, and write() answers what the socket said', () => {
    const sink = new Sink(100);
    const batch = new WriteBatch(sink, 64);
    const chunk = Buffer.alloc(400, 0x61);
    batch.begin();
    const answers: boolean[] = [];
    for (let at = 0; at < 400; at += 10) answers.push(batch.write(chunk.subarray(at, at + 10)));
    assert.equal(batch.end(), false);
    assert.equal(Buffer.concat(sink.writes).length, 400);
    assert.ok(sink.writes.every((w) => w.length <= 64 + 10));
    assert.ok(answers.includes(false), 'the socket said wait, and the writer heard it');
    sink.writableNeedDrain = true;
    batch.begin();
    assert.equal(batch.write(Buffer.from('x')), false, 'a socket that needs a drain says so from the start');
    batch.end();
  });
});
