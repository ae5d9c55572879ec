// The built CLI as a user runs it: `postern demo` prints a psql line that
// works exactly as printed; `postern --config FILE` serves, and SIGTERM stops
// accepting, lets open sessions run until limits.shutdown_timeout, then ends
// them with FATAL 57P01 and exits 0.

import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { freePort, type PgCluster, startPostgres } from '../../src/dev/cluster.ts';
import { MAIN, pgEnv, run, startCli, waitUntil } from '../helpers/postern.ts';

const PASSWORD = 'cli-test-pw';
let cluster: PgCluster;
let dir: string;

function refused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(false);
    });
    s.once('error', () => resolve(true));
  });
}

before(async () => {
  assert.ok(existsSync(MAIN), 'dist/main.js is built by `npm test` (pretest)');
  dir = mkdtempSync(join(tmpdir(), 'postern-cli-'));
  cluster = await startPostgres({ users: [{ name: 'app', password: PASSWORD }], databases: [{ name: 'appdb', owner: 'app' }] });
});

after(async () => {
  await cluster?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('postern demo: the printed psql command works exactly as printed, Ctrl-C cleans up', async () => {
  const demo = startCli(['demo', '--port', '0']);
  try {
    const line = await waitUntil(() => /^\s+(PGPASSFILE=\S+ psql "[^"]+")$/m.exec(demo.out())?.[1], 60_000, 'the psql line');
    const tmp = /PGPASSFILE=(\S+)\/pgpass/.exec(line)?.[1] ?? '';
    assert.ok(tmp !== '' && existsSync(tmp));
    assert.match(line, /sslmode=verify-full/);
    const r = await run('sh', ['-c', `${line} -X -A -t -c "select 'through ' || current_user" -c '\\conninfo'`], { env: pgEnv() });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^through app$/m);
    assert.match(r.stdout, /SSL connection \(protocol: TLSv1\.3/);
    demo.child.kill('SIGINT');
    assert.equal(await demo.exited, 0);
    assert.equal(existsSync(tmp), false, 'temp folder removed');
  } finally {
    demo.child.kill('SIGKILL');
  }
});

test('postern --config FILE serves; SIGTERM drains and then ends sessions with 57P01', async () => {
  const port = await freePort();
  const file = join(dir, 'postern.yaml');
  writeFileSync(
    file,
    [
      `listen: { host: 127.0.0.1, port: ${port} }`,
      'tls: { mode: disable }',
      'databases:',
      `  appdb: { host: 127.0.0.1, port: ${cluster.port}, tls: { mode: disable } }`,
      'limits: { shutdown_timeout: 1500ms }',
      'log: { level: info }',
      '',
    ].join('\n'),
  );
  const check = await run(process.execPath, [MAIN, 'check', '--config', file]);
  assert.equal(check.code, 0, check.stderr);
  const proc = startCli(['--config', file]);
  try {
    await waitUntil(() => proc.out().includes('"listening"'), 20_000, 'listening');
    const client = new pg.Client({ host: '127.0.0.1', port, user: 'app', password: PASSWORD, database: 'appdb' });
    const errors: Array<{ code?: string }> = [];
    client.on('error', (e: Error & { code?: string }) => {
      errors.push(e);
    });
    await client.connect();
    assert.equal((await client.query('select 1 as x')).rows[0].x, 1);
    proc.child.kill('SIGTERM');
    await waitUntil(() => refused(port), 5000, 'listener closed');
    // The open session still works during the drain window.
    assert.equal((await client.query('select 2 as x')).rows[0].x, 2);
    assert.equal(await proc.exited, 0);
    await waitUntil(() => errors.length > 0, 5000, 'session ended');
    assert.equal(errors[0]?.code, '57P01');
    await client.end().catch(() => {});
    assert.doesNotMatch(proc.out(), new RegExp(PASSWORD));
  } finally {
    proc.child.kill('SIGKILL');
  }
});
