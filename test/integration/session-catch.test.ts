// One catch per session (issue 12): an unexpected error thrown while one
// session handles its bytes (client side, server side, janitor tick) ends
// that session only, with XX000, and the process and every other session
// carry on; the server connection it held is closed or cleaned, never lent
// in an unknown state.
//
// The throws are injected into the real code: the admin console's handler
// (through the context's console factory) and the pooled link's methods
// (patched on their prototype for one marked client).

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { type PgCluster, startPostgres } from '../../src/dev/cluster.ts';
import { PooledLink } from '../../src/frontend/pooled-link.ts';
import { logsWith, type RunningPostern, startPostern, waitUntil } from '../helpers/postern.ts';

const PW = 'catch-pw';
let dir: string;
let cluster: PgCluster;
let px: RunningPostern;

function client(application_name = 'bystander'): pg.Client {
  const c = new pg.Client({ host: '127.0.0.1', port: px.port, user: 'app', database: 'appdb', application_name });
  c.on('error', () => {});
  return c;
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'postern-catch-'));
  cluster = await startPostgres({ users: [{ name: 'app', password: PW }], databases: [{ name: 'appdb', owner: 'app' }] });
  writeFileSync(join(dir, 'hba.conf'), 'host all all 127.0.0.1/32 trust\n');
  px = await startPostern({
    tls: { mode: 'disable' },
    auth: { hba_file: join(dir, 'hba.conf') },
    pool: { pool_mode: 'transaction', default_pool_size: 2, client_idle_timeout: '60s' },
    admin: { users: ['app'] },
    databases: { appdb: { host: cluster.host, port: cluster.port, server_password: PW, tls: { mode: 'disable' } } },
    log: { level: 'info' },
  });
});

after(async () => {
  await px?.close();
  await cluster?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Patches a PooledLink method to throw for the client whose application_name is `victim`, once it is greeted. */
function inject(method: 'onClientFrame' | 'onServerMessage' | 'tick'): () => void {
  const proto = PooledLink.prototype as unknown as Record<string, (...a: unknown[]) => unknown>;
  const original = proto[method] as (...a: unknown[]) => unknown;
  proto[method] = function (this: PooledLink, ...args: unknown[]) {
    if (this.settings.reported.get('application_name') === 'victim') throw new Error(`injected failure in ${method}`);
    return original.apply(this, args);
  };
  return () => {
    proto[method] = original;
  };
}

async function expectXX000(c: pg.Client, sql: string): Promise<void> {
  const err = await c.query(sql).then(
    () => null,
    (e: Error & { code?: string }) => e,
  );
  assert.ok(err !== null, 'the victim got an error');
  assert.ok(err.code === 'XX000' || /terminated|closed/i.test(err.message), `${err.code} ${err.message}`);
}

for (const method of ['onClientFrame', 'onServerMessage'] as const) {
  test(`a throw in the pooled link's ${method} ends that session only`, async () => {
    const bystander = client();
    await bystander.connect();
    await bystander.query('begin');
    const victim = client('victim');
    await victim.connect();
    const restore = inject(method);
    try {
      await expectXX000(victim, 'select 1');
    } finally {
      restore();
    }
    assert.equal((await bystander.query('select 2 as v')).rows[0].v, 2);
    await bystander.query('commit');
    assert.ok(logsWith(px.logs, 'internal error').length > 0, 'logged with its ids');
    const line = logsWith(px.logs, 'internal error').at(-1);
    assert.equal(typeof line?.client, 'number');
    const pool = px.postern.ctx.pools.all()[0];
    await waitUntil(
      () => pool !== undefined && pool.counts().sv_active === 0 && pool.counts().sv_tested === 0,
      5_000,
      'no connection left lent',
    );
    assert.ok(pool !== undefined && pool.connections().every((c) => !c.closed));
    const fresh = client();
    await fresh.connect();
    assert.equal((await fresh.query('select 3 as v')).rows[0].v, 3);
    await fresh.end();
    await bystander.end();
  });
}

test("a throw in a session's janitor tick ends that session only", async () => {
  const bystander = client();
  await bystander.connect();
  const victim = client('victim');
  const ended = new Promise<Error>((resolve) => victim.on('error', resolve));
  await victim.connect();
  await victim.query('select 1');
  const restore = inject('tick');
  try {
    const e = (await ended) as Error & { code?: string };
    assert.equal(e.code, 'XX000');
  } finally {
    restore();
  }
  assert.equal((await bystander.query('select 4 as v')).rows[0].v, 4);
  await bystander.end();
});

test("a throw in the admin console's handler ends that console session only", async () => {
  const ctx = px.postern.ctx;
  const real = ctx.adminConsole;
  ctx.adminConsole = (who, hooks) => {
    const session = real?.(who, hooks);
    return {
      onFrame: () => {
        throw new Error('injected failure in the admin console');
      },
      close: () => session?.close(),
    };
  };
  try {
    const admin = new pg.Client({ host: '127.0.0.1', port: px.port, user: 'app', database: 'postern' });
    admin.on('error', () => {});
    await admin.connect();
    await expectXX000(admin, 'SHOW POOLS');
  } finally {
    ctx.adminConsole = real;
  }
  const c = client();
  await c.connect();
  assert.equal((await c.query('select 5 as v')).rows[0].v, 5);
  await c.end();
});
