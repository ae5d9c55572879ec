// Large results through a pooled session to a slow client: every byte arrives
// in order (the same SHA-256 as straight from PostgreSQL) while Postern reads
// the server into a reused buffer, and Postern's memory stays bounded because
// it holds the server back instead of buffering the result. Also the same
// result to a fast client, and to two slow clients at once.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { type PgCluster, startPostgres } from '../../src/dev/cluster.ts';
import { pgEnv, type RunningPostern, startPostern } from '../helpers/postern.ts';

const PW = 'streaming-pw';
/** About 48 MiB of COPY text with a different line each time (a reordered or reused chunk changes the hash). */
const COPY = 'COPY (SELECT i, md5(i::text), repeat(chr(65 + i % 26), 100 + i % 200) FROM generate_series(1, 180000) i) TO STDOUT';
let dir: string;
let cluster: PgCluster;
let px: RunningPostern;

/** Runs psql COPY and hashes its output, reading at `mibPerSec` (null: as fast as it comes). */
function copyHash(port: number, mibPerSec: number | null): Promise<{ hash: string; bytes: number }> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      'psql',
      ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', '127.0.0.1', '-p', String(port), '-U', 'app', '-d', 'appdb', '-c', COPY],
      {
        env: pgEnv({ PGPASSWORD: PW }),
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    const hash = createHash('sha256');
    let bytes = 0;
    let stderr = '';
    const t0 = performance.now();
    child.stdout.on('data', (d: Buffer) => {
      hash.update(d);
      bytes += d.length;
      if (mibPerSec === null) return;
      const ahead = bytes / ((mibPerSec * 1024 * 1024) / 1000) - (performance.now() - t0);
      if (ahead > 5) {
        child.stdout.pause();
        setTimeout(() => child.stdout.resume(), ahead);
      }
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    // A corrupted stream can leave psql waiting for a message that never ends.
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code !== 0) reject(new Error(`psql exited ${code}: ${stderr}`));
      else resolve({ hash: hash.digest('hex'), bytes });
    });
  });
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'postern-stream-'));
  cluster = await startPostgres({ users: [{ name: 'app', password: PW }], databases: [{ name: 'appdb', owner: 'app' }] });
  writeFileSync(join(dir, 'hba.conf'), 'host all all 127.0.0.1/32 trust\n');
  px = await startPostern({
    tls: { mode: 'disable' },
    auth: { hba_file: join(dir, 'hba.conf') },
    pool: { pool_mode: 'transaction', default_pool_size: 2 },
    // Plaintext to the server: its reads land in Postern's reused buffer.
    databases: { appdb: { host: cluster.host, port: cluster.port, server_password: PW, tls: { mode: 'disable' } } },
    log: { level: 'warn' },
  });
});

after(async () => {
  await px?.close();
  await cluster?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('a large COPY to a slow client arrives byte for byte, and Postern buffers almost none of it', async () => {
  const direct = await copyHash(cluster.port, null);
  assert.ok(direct.bytes > 40 * 1024 * 1024, `only ${direct.bytes} bytes`);
  // What Postern holds for its clients: bytes written to their sockets and not yet taken.
  let peak = 0;
  let samples = 0;
  const sampler = setInterval(() => {
    for (const s of px.postern.ctx.sessions) peak = Math.max(peak, s.info().outBuffered);
    samples++;
  }, 10);
  try {
    const slow = await copyHash(px.port, 24);
    assert.equal(slow.bytes, direct.bytes);
    assert.equal(slow.hash, direct.hash);
  } finally {
    clearInterval(sampler);
  }
  // Buffering the result would hold tens of MiB; backpressure keeps it to a few socket-sized pieces.
  assert.ok(samples > 50, `only ${samples} samples`);
  assert.ok(peak > 0, 'the slow client made Postern queue something (the test exercised backpressure)');
  assert.ok(peak < 1024 * 1024, `Postern held up to ${(peak / 1048576).toFixed(2)} MiB for the client`);
});

test('the same COPY to a fast client and to two slow clients at once: every stream intact', async () => {
  const direct = await copyHash(cluster.port, null);
  const [fast, a, b] = await Promise.all([copyHash(px.port, null), copyHash(px.port, 40), copyHash(px.port, 60)]);
  for (const r of [fast, a, b]) {
    assert.equal(r.bytes, direct.bytes);
    assert.equal(r.hash, direct.hash);
  }
});
