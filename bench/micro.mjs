#!/usr/bin/env node
// Micro-benchmarks of the data path's pure parts, without sockets: the
// framer (MessageStream) over realistic traffic, the forwarding loop as a
// session runs it (frame, inspect ReadyForQuery, forward runs, peek for
// statistics), the statement tracker and the query-shape normalizer. Prints
// ns per operation (median of --runs) so a change to the hot path can be
// compared before and after on the same machine:
//
//   npm run build && node bench/micro.mjs [--runs 7] [--only framer,forward,tracker,normalize]

import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const load = (p) => import(pathToFileURL(join(ROOT, 'dist', p)).href);
const { MessageStream } = await load('protocol/framer.js');
const { BE, FE, typeTable, VALID_BACKEND, VALID_FRONTEND } = await load('protocol/codes.js');
const { QueryTracker } = await load('stats/tracker.js');
const { loadNormalizer } = await load('stats/normalize.js');

const { values } = parseArgs({ options: { runs: { type: 'string', default: '7' }, only: { type: 'string' } } });
const RUNS = Number(values.runs);
const only = values.only ? new Set(values.only.split(',')) : null;

function frame(type, body) {
  const b = Buffer.isBuffer(body) ? body : Buffer.from(body);
  const out = Buffer.alloc(5 + b.length);
  out[0] = typeof type === 'string' ? type.charCodeAt(0) : type;
  out.writeInt32BE(4 + b.length, 1);
  b.copy(out, 5);
  return out;
}
const cstr = (s) => Buffer.from(`${s}\0`);

// What a server answers to pgbench -S: RowDescription, one DataRow, CommandComplete, ReadyForQuery.
const ROW_DESC = frame('T', Buffer.concat([Buffer.from([0, 1]), cstr('abalance'), Buffer.alloc(18)]));
const DATA_ROW = frame('D', Buffer.concat([Buffer.from([0, 1, 0, 0, 0, 4]), Buffer.from('1234')]));
const SELECT_ANSWER = Buffer.concat([ROW_DESC, DATA_ROW, frame('C', cstr('SELECT 1')), frame('Z', 'I')]);
const QUERY = frame('Q', cstr('SELECT abalance FROM pgbench_accounts WHERE aid = 48213;'));
// A large result: 1,000 rows of 100 bytes per chunk (COPY-like streaming).
const BIG = Buffer.concat([
  ...Array.from({ length: 1000 }, () => frame('D', Buffer.alloc(100, 0x61))),
  frame('C', cstr('SELECT 1000')),
  frame('Z', 'I'),
]);

function timeIt(name, ops, fn) {
  const samples = [];
  fn(Math.max(1, Math.floor(ops / 10))); // warm-up
  for (let r = 0; r < RUNS; r++) {
    const t0 = process.hrtime.bigint();
    fn(ops);
    samples.push(Number(process.hrtime.bigint() - t0) / ops);
  }
  samples.sort((a, b) => a - b);
  const med = samples[Math.floor(samples.length / 2)];
  console.log(
    `${name.padEnd(58)} ${med.toFixed(1).padStart(9)} ns/op   (min ${samples[0].toFixed(1)}, max ${samples[samples.length - 1].toFixed(1)})`,
  );
}

const noop = () => undefined;
const INSPECT_RFQ = typeTable([BE.ErrorResponse, BE.ReadyForQuery, BE.ParameterStatus]);
const PEEK = typeTable([BE.CommandComplete, BE.EmptyQueryResponse, BE.PortalSuspended, BE.ReadyForQuery, BE.ErrorResponse]);

if (!only || only.has('framer')) {
  console.log('framer (MessageStream.push, one chunk per call)');
  const sink = { onRun: noop, onMessage: noop, onPeek: noop, onViolation: noop };
  const plain = new MessageStream(sink, VALID_BACKEND, new Uint8Array(256), 1 << 30);
  timeIt('  pgbench -S answer (4 frames), nothing inspected', 1_000_000, (n) => {
    for (let i = 0; i < n; i++) plain.push(SELECT_ANSWER);
  });
  const pooled = new MessageStream(sink, VALID_BACKEND, INSPECT_RFQ, 1 << 30);
  timeIt('  pgbench -S answer, ReadyForQuery inspected (pooled)', 1_000_000, (n) => {
    for (let i = 0; i < n; i++) pooled.push(SELECT_ANSWER);
  });
  const peeked = new MessageStream(sink, VALID_BACKEND, INSPECT_RFQ, 1 << 30);
  peeked.setPeek(PEEK);
  timeIt('  pgbench -S answer, inspected + peeked (statistics on)', 1_000_000, (n) => {
    for (let i = 0; i < n; i++) peeked.push(SELECT_ANSWER);
  });
  timeIt('  1,000-row chunk (106 kB), per row', 1000 * 200, (n) => {
    for (let i = 0; i < n / 1000; i++) pooled.push(BIG);
  });
  // The same chunk cut at odd offsets: headers and frames straddle reads.
  const pieces = [];
  for (let off = 0; off < BIG.length; off += 4093) pieces.push(BIG.subarray(off, Math.min(BIG.length, off + 4093)));
  timeIt('  1,000-row result in 4093-byte reads, per row', 1000 * 200, (n) => {
    for (let i = 0; i < n / 1000; i++) for (const p of pieces) pooled.push(p);
  });
}

if (!only || only.has('forward')) {
  console.log('forwarding loop (framer + session-like sink: forward runs, act on ReadyForQuery, count client frames)');
  let written = 0;
  let ready = 0;
  const serverSink = {
    onRun: (_buf, s, e) => {
      written += e - s;
    },
    onMessage: (type, _buf, s, e) => {
      if (type === BE.ReadyForQuery) ready++;
      written += e - s;
    },
    onPeek: noop,
    onViolation: noop,
  };
  const clientSink = {
    onRun: (_buf, s, e) => {
      written += e - s;
    },
    onMessage: (_type, _buf, s, e) => {
      written += e - s;
    },
    onPeek: noop,
    onViolation: noop,
  };
  const fromServer = new MessageStream(serverSink, VALID_BACKEND, INSPECT_RFQ, 1 << 30);
  const fromClient = new MessageStream(clientSink, VALID_FRONTEND, typeTable([FE.Terminate, FE.Query, FE.Parse]), 1 << 30);
  fromClient.setCount(typeTable([FE.Query, FE.Sync, FE.FunctionCall]));
  timeIt('  one pgbench -S transaction (query in, answer out)', 1_000_000, (n) => {
    for (let i = 0; i < n; i++) {
      fromClient.push(QUERY);
      fromServer.push(SELECT_ANSWER);
    }
  });
  if (ready === 0 || written === 0) throw new Error('the forwarding loop forwarded nothing');
}

if (!only || only.has('tracker')) {
  console.log('statement tracker (per transaction)');
  const sinkT = { onStatement: noop, onCycle: noop };
  const CC = frame('C', cstr('SELECT 1'));
  const Z = frame('Z', 'I');
  for (const texts of [false, true]) {
    const t = new QueryTracker(sinkT, texts);
    timeIt(`  Query + CommandComplete + ReadyForQuery, texts ${texts ? 'on' : 'off'}`, 1_000_000, (n) => {
      for (let i = 0; i < n; i++) {
        t.onClientFrame(FE.Query, QUERY, 0, QUERY.length);
        t.onServerFrame(BE.CommandComplete, CC, 0, CC.length);
        t.onServerFrame(BE.ReadyForQuery, Z, 0, Z.length);
      }
    });
  }
}

if (!only || only.has('normalize')) {
  console.log('query-shape normalizer (describe per statement)');
  const norm = await loadNormalizer();
  let k = 0;
  timeIt('  new literal each time (simple protocol), cached shape', 200_000, (n) => {
    for (let i = 0; i < n; i++) norm.describe(`SELECT abalance FROM pgbench_accounts WHERE aid = ${k++};`);
  });
  const same = 'SELECT abalance FROM pgbench_accounts WHERE aid = $1';
  timeIt('  same text (prepared statement), exact-text cache', 1_000_000, (n) => {
    for (let i = 0; i < n; i++) norm.describe(same);
  });
}
