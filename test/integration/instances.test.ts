// Several Postern instances behind one real TCP load balancer (Debian's
// haproxy, round robin on loopback ports): a CancelRequest lands on whichever
// instance the balancer picks, and the one that does not hold the session
// forwards it, signed with cluster.secret, to the one that does. Instance A
// runs in this process (cluster.instance_id 1); instance B is the built CLI
// with `workers: 2` (instance 2), so a forwarded cancel may also have to cross
// B's workers. Forged client keys, forged, stale and replayed peer packets
// cancel nothing; an instance without an id reaches its peers through
// cluster.peers_dns. One PostgreSQL cluster for the file.

import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import pg from 'pg';
import postgres from 'postgres';
import { instanceOfPid } from '../../src/cluster/instances.ts';
import { freePort, type PgCluster, startPostgres } from '../../src/dev/cluster.ts';
import { encodeCancel, encodePeerCancel, peerCancelBody } from '../../src/protocol/startup.ts';
import { type RunningPostern, startCli, startPostern, waitUntil } from '../helpers/postern.ts';

const PW = 'instances-pw-31';
const SECRET = 'instances-shared-secret-0123456789';
let dir: string;
let cluster: PgCluster;
let a: RunningPostern;
let b: ReturnType<typeof startCli>;
let c: RunningPostern;
let haproxy: ChildProcess;
const port = { a: 0, b: 0, bAdmin: 0, lb: 0 };

const database = () => ({ appdb: { host: cluster.host, port: cluster.port, server_password: PW, tls: { mode: 'disable' } } });

/** Cancel outcomes of instance A (in this process). */
function countsA(): Record<string, number> {
  return Object.fromEntries(a.postern.ctx.stats.cancels);
}

/** Cancel outcomes of instance B, both workers added up, from its /metrics. */
async function countsB(): Promise<Record<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${port.bAdmin}/metrics`)).text();
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^postern_cancels_total\{outcome="([a-z_]+)"\} (\d+)$/gm)) out[m[1] as string] = Number(m[2]);
  return out;
}

const n = (r: Record<string, number>, k: string): number => r[k] ?? 0;

async function connectTo(p: number): Promise<pg.Client> {
  const cl = new pg.Client({ host: '127.0.0.1', port: p, user: 'app', database: 'appdb' });
  cl.on('error', () => {});
  await cl.connect();
  return cl;
}

/** The (pid, key) a pg client got in BackendKeyData (protocol 3.0: a 4-byte key). */
function keyOf(cl: pg.Client): { pid: number; key: Buffer } {
  const k = cl as unknown as { processID: number; secretKey: number };
  const key = Buffer.alloc(4);
  key.writeInt32BE(k.secretKey);
  return { pid: k.processID, key };
}

/** Writes one startup-phase packet on a new connection and waits for the peer to close it. */
function sendPacket(p: number, packet: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port: p }, () => s.write(packet));
    s.on('error', reject);
    s.on('close', () => resolve());
    s.resume();
  });
}

function signed(secret: string, instance: number, pid: number, key: Buffer, time = Math.floor(Date.now() / 1000)): Buffer {
  const body = peerCancelBody(instance, pid, time, key);
  return encodePeerCancel(body, createHmac('sha256', secret).update(body).digest());
}

/** Runs pg_sleep(secs) on `cl`; resolves with the SQLSTATE it failed with, or 'ok'. */
function sleepOn(cl: pg.Client, secs: number): Promise<string> {
  return cl.query(`select pg_sleep(${secs})`).then(
    () => 'ok',
    (e: { code?: string }) => e.code ?? 'error',
  );
}

/** Waits until the session's pg_sleep is running on the server. */
async function sleeping(): Promise<void> {
  await waitUntil(
    async () =>
      (
        await cluster.psql("select count(*) from pg_stat_activity where state = 'active' and query like 'select pg_sleep(%'", {
          db: 'appdb',
        })
      ).trim() !== '0',
    10_000,
    'pg_sleep running',
  );
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'postern-instances-'));
  cluster = await startPostgres({ users: [{ name: 'app', password: PW }], databases: [{ name: 'appdb', owner: 'app' }] });
  writeFileSync(join(dir, 'hba.conf'), 'host all all 127.0.0.1/32 trust\n');
  port.a = await freePort();
  port.b = await freePort();
  port.bAdmin = await freePort();
  port.lb = await freePort();
  const peers = [
    { id: 1, host: '127.0.0.1', port: port.a },
    { id: 2, host: '127.0.0.1', port: port.b },
  ];
  a = await startPostern({
    listen: { port: port.a },
    tls: { mode: 'disable' },
    auth: { hba_file: join(dir, 'hba.conf') },
    pool: { pool_mode: 'transaction', default_pool_size: 4 },
    // The same peer list on every instance: its own entry is skipped.
    cluster: { instance_id: 1, peers, secret: SECRET },
    databases: database(),
    log: { level: 'info' },
  });
  writeFileSync(
    join(dir, 'b.yaml'),
    JSON.stringify({
      listen: { host: '127.0.0.1', port: port.b },
      workers: 2,
      tls: { mode: 'disable' },
      auth: { hba_file: join(dir, 'hba.conf') },
      admin: { listen: `127.0.0.1:${port.bAdmin}` },
      pool: { pool_mode: 'transaction', default_pool_size: 4 },
      cluster: { instance_id: 2, peers, secret: SECRET },
      databases: database(),
      log: { level: 'warn' },
    }),
  );
  b = startCli(['--config', join(dir, 'b.yaml')]);
  await waitUntil(
    async () => (await fetch(`http://127.0.0.1:${port.bAdmin}/readyz`).catch(() => null))?.status === 200,
    30_000,
    'instance B ready',
  );
  // An instance without an id: what it does not hold goes to every address of the DNS name.
  c = await startPostern({
    tls: { mode: 'disable' },
    auth: { hba_file: join(dir, 'hba.conf') },
    cluster: { peers_dns: `localhost:${port.a}`, secret: SECRET },
    databases: database(),
  });
  writeFileSync(
    join(dir, 'haproxy.cfg'),
    [
      'global',
      '  maxconn 256',
      'defaults',
      '  mode tcp',
      '  timeout connect 2s',
      '  timeout client 60s',
      '  timeout server 60s',
      'frontend pg',
      `  bind 127.0.0.1:${port.lb}`,
      '  default_backend posterns',
      'backend posterns',
      '  balance roundrobin',
      `  server a 127.0.0.1:${port.a}`,
      `  server b 127.0.0.1:${port.b}`,
      '',
    ].join('\n'),
  );
  haproxy = spawn('haproxy', ['-db', '-f', join(dir, 'haproxy.cfg')], { stdio: 'ignore' });
  await waitUntil(
    () =>
      new Promise<boolean>((resolve) => {
        const s = net.connect({ host: '127.0.0.1', port: port.lb }, () => {
          s.destroy();
          resolve(true);
        });
        s.on('error', () => resolve(false));
      }),
    10_000,
    'haproxy listening',
  );
});

after(async () => {
  haproxy?.kill('SIGKILL');
  b?.child.kill('SIGKILL');
  await c?.close();
  await a?.close();
  await cluster?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('cancel keys carry the instance: pids of A and B name instances 1 and 2', async () => {
  const ca = await connectTo(port.a);
  const cb = await connectTo(port.b);
  try {
    assert.equal(instanceOfPid(keyOf(ca).pid), 1);
    assert.equal(instanceOfPid(keyOf(cb).pid), 2);
  } finally {
    await Promise.all([ca.end(), cb.end()]);
  }
});

test('through HAProxy round robin: every cancel that lands on the other instance is forwarded and cancels the query', async (t) => {
  const a0 = countsA();
  const b0 = await countsB();
  const latencies: number[] = [];
  // With strict round robin and one connection per client, the query's
  // connection and the cancel's go to different instances every time.
  for (let i = 0; i < 4; i++) {
    const sql = postgres({ host: '127.0.0.1', port: port.lb, user: 'app', database: 'appdb', max: 1, fetch_types: false });
    try {
      const q = sql`select pg_sleep(30)`;
      const done = q.then(
        () => 'ok',
        (e: { code?: string }) => e.code ?? 'error',
      );
      await sleeping();
      const t0 = process.hrtime.bigint();
      q.cancel();
      assert.equal(await done, '57014');
      latencies.push(Number(process.hrtime.bigint() - t0) / 1e6);
    } finally {
      await sql.end();
    }
  }
  const a1 = countsA();
  const b1 = await countsB();
  const sent = n(a1, 'to_peer') - n(a0, 'to_peer') + n(b1, 'to_peer') - n(b0, 'to_peer');
  const received = n(a1, 'from_peer') - n(a0, 'from_peer') + n(b1, 'from_peer') - n(b0, 'from_peer');
  assert.ok(sent >= 1, `some cancels crossed instances (A ${JSON.stringify(a1)}, B ${JSON.stringify(b1)})`);
  assert.equal(received, sent, 'every forwarded cancel arrived and was accepted');
  assert.equal(n(a1, 'peer_refused') + n(b1, 'peer_refused'), n(a0, 'peer_refused') + n(b0, 'peer_refused'));
  t.diagnostic(`cancel latency through HAProxy (ms): ${latencies.map((l) => l.toFixed(1)).join(', ')}; ${sent} of 4 crossed instances`);
});

test("a CancelRequest sent straight to the other instance cancels A's and B's sessions", async () => {
  for (const [owner, other] of [
    [port.a, port.b],
    [port.b, port.a],
    [port.b, port.a],
  ] as const) {
    const cl = await connectTo(owner);
    try {
      const { pid, key } = keyOf(cl);
      const result = sleepOn(cl, 30);
      await sleeping();
      await sendPacket(other, encodeCancel(pid, key));
      assert.equal(await result, '57014');
      assert.equal((await cl.query('select 1 as one')).rows[0].one, 1, 'the session goes on');
    } finally {
      await cl.end();
    }
  }
});

test('a forged key is forwarded but cancels nothing; forged, stale and replayed peer packets are refused', async () => {
  const cl = await connectTo(port.a);
  try {
    const { pid, key } = keyOf(cl);
    const wrong = Buffer.from(key.map((x) => x ^ 0x5a));
    const before = countsA();
    const result = sleepOn(cl, 1.5);
    await sleeping();
    // Right pid, wrong key, through B: forwarded, and A finds no such key.
    await sendPacket(port.b, encodeCancel(pid, wrong));
    // Right pid and key, but signed with another secret, too old, or not signed by a peer at all.
    await sendPacket(port.a, signed('not-the-cluster-secret-at-all', 1, pid, key));
    await sendPacket(port.a, signed(SECRET, 1, pid, key, Math.floor(Date.now() / 1000) - 120));
    await sendPacket(port.a, signed(SECRET, 2, pid, key));
    assert.equal(await result, 'ok', 'the query ran to its end');
    await waitUntil(() => n(countsA(), 'unknown') > n(before, 'unknown'), 5000, 'A saw the forged key');
    const after1 = countsA();
    assert.equal(n(after1, 'peer_refused') - n(before, 'peer_refused'), 3);
    assert.ok(a.logs.some((l) => l.includes('forwarded cancel request refused') && l.includes('bad signature')));
    assert.ok(a.logs.some((l) => l.includes('too old')));
    assert.ok(a.logs.some((l) => l.includes('for another instance')));
    // A packet signed with the secret works once; the same bytes again are a replay.
    const packet = signed(SECRET, 1, pid, key);
    const again = sleepOn(cl, 30);
    await sleeping();
    await sendPacket(port.a, packet);
    assert.equal(await again, '57014');
    const third = sleepOn(cl, 1.5);
    await sleeping();
    await sendPacket(port.a, packet);
    assert.equal(await third, 'ok', 'a replayed packet cancels nothing');
    assert.ok(a.logs.some((l) => l.includes('replayed')));
  } finally {
    await cl.end();
  }
  // No secret in any log line.
  assert.ok(!a.logs.some((l) => l.includes(SECRET)));
});

test('without an instance id, a cancel goes to every address of cluster.peers_dns', async () => {
  const cl = await connectTo(port.a);
  try {
    const { pid, key } = keyOf(cl);
    const result = sleepOn(cl, 30);
    await sleeping();
    await sendPacket(c.port, encodeCancel(pid, key));
    assert.equal(await result, '57014');
    assert.equal(n(Object.fromEntries(c.postern.ctx.stats.cancels), 'to_peer'), 1);
  } finally {
    await cl.end();
  }
});
