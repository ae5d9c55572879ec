// The web dashboard in a real browser (Debian's chromium driven by
// playwright-core) against a real PostgreSQL and pgbench through Postern:
// tiles and tables agree with SHOW POOLS / SHOW SERVERS / SHOW QUERIES, the
// charts get live points while pgbench runs, a filter narrows a table, a
// wrong password gets 401 and no data, a stats user sees no action and a
// forged action is refused, the stream survives RELOAD (run from the page's
// own button), and a screenshot is written as a test artifact. Any
// JavaScript error on the page fails the test that saw it.

import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { type Browser, chromium, type Page } from 'playwright-core';
import { type PgCluster, startPostgres } from '../../src/dev/cluster.ts';
import { pgEnv, psql, type RunningPostern, run, startPostern, waitUntil } from '../helpers/postern.ts';

const CHROMIUM = process.env.POSTERN_CHROMIUM ?? '/usr/bin/chromium';
/** Where test artifacts go (the screenshot); docs/dashboard.md shows a copy. */
const ARTIFACTS = join(process.cwd(), 'build', 'test-artifacts');
const PW = { app: 'app-secret-Qd71', admin: 'admin-secret-Kx28', watcher: 'watcher-secret-Tm55', server: 'server-secret-Jc90' };

// The page's globals as the functions given to page.evaluate see them (the test build has no DOM types).
interface DomNode {
  textContent: string | null;
  getAttribute(name: string): string | null;
  querySelectorAll(selector: string): DomNode[];
}
declare const window: { __postern?: { renders: number; points: number; errors: string[] } };
declare const document: { querySelector(selector: string): DomNode | null };

let dir: string;
let cluster: PgCluster;
let p: RunningPostern;
let browser: Browser;
let base: string;

function config(): Record<string, unknown> {
  return {
    tls: { mode: 'disable' },
    auth: { hba_file: join(dir, 'hba.conf'), users_file: join(dir, 'users.txt') },
    admin: { listen: '127.0.0.1:0', users: ['admin'], stats_users: ['watcher'] },
    log: { level: 'info' },
    pool: { pool_mode: 'transaction', default_pool_size: 3 },
    databases: {
      appdb: { host: cluster.host, port: cluster.port, server_user: 'app', server_password: PW.server, tls: { mode: 'disable' } },
    },
  };
}

/** An admin console query through psql (unaligned, tab-separated, with its header); rows as objects by column name. */
async function show(what: string): Promise<Array<Record<string, string>>> {
  const r = await psql(
    `host=127.0.0.1 port=${p.port} dbname=postern user=admin`,
    ['-F', '\t', '-P', 'tuples_only=off', '-P', 'footer=off', '-c', `SHOW ${what}`],
    { password: PW.admin },
  );
  assert.equal(r.code, 0, r.stderr);
  const [head, ...lines] = r.stdout.replace(/\n$/, '').split('\n');
  const columns = (head ?? '').split('\t');
  return lines.filter((l) => l !== '').map((l) => Object.fromEntries(l.split('\t').map((v, i) => [columns[i] ?? `c${i}`, v])));
}

function auth(user: string, password: string): string {
  return `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
}

/** A page logged in as `user`, with every page error and console error collected. */
async function open(user: string, password: string): Promise<{ page: Page; errors: string[]; close: () => Promise<void> }> {
  const context = await browser.newContext({ httpCredentials: { username: user, password }, viewport: { width: 1400, height: 1800 } });
  const page = await context.newPage();
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(`console: ${m.text()}`);
  });
  page.on('dialog', (d) => void d.accept());
  await page.goto(base);
  await page.waitForFunction(() => (window.__postern?.renders ?? 0) > 0);
  return { page, errors, close: () => context.close() };
}

/** Cell texts of a dashboard table, as objects by column name. */
function tableRows(page: Page, id: string): Promise<Array<Record<string, string>>> {
  return page.evaluate((tid) => {
    const t = document.querySelector(`#${tid} table`);
    if (t === null) return [];
    const keys = [...t.querySelectorAll('thead th')].map((th) => th.textContent ?? '');
    return [...t.querySelectorAll('tbody tr')].map((tr) =>
      Object.fromEntries([...tr.querySelectorAll('td')].map((td, i) => [keys[i] ?? String(i), td.textContent ?? ''])),
    );
  }, id);
}

const points = (page: Page): Promise<number> =>
  page.evaluate(() => Number(document.querySelector('#chart-tps')?.getAttribute('data-points') ?? 0));
const tileValue = (page: Page, key: string): Promise<string> => page.locator(`[data-tile="${key}"] .value`).innerText();

function pgbench(seconds: number): ChildProcess {
  const script = join(dir, 'select.sql');
  writeFileSync(script, '\\set aid random(1, 100000)\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n');
  return spawn(
    'pgbench',
    ['-n', '-f', script, '-M', 'extended', '-c', '4', '-T', String(seconds), '-h', '127.0.0.1', '-p', String(p.port), '-U', 'app', 'appdb'],
    { env: pgEnv({ PGPASSWORD: PW.app }), stdio: 'ignore' },
  );
}

before(async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: scripts/install-deps.sh installs Debian's chromium`);
  dir = mkdtempSync(join(tmpdir(), 'postern-dash-'));
  cluster = await startPostgres({ users: [{ name: 'app', password: PW.server }], databases: [{ name: 'appdb', owner: 'app' }] });
  const init = await run('pgbench', ['-i', '-s', '1', '-q', 'appdb'], { env: cluster.env() });
  assert.equal(init.code, 0, init.stderr);
  await cluster.psql('grant select, insert, update, delete on all tables in schema public to app', { db: 'appdb' });
  const { makeVerifier, formatVerifier } = await import('../../src/auth/scram.ts');
  const line = async (u: string, pw: string) => `"${u}" "${formatVerifier(await makeVerifier(pw))}"`;
  writeFileSync(
    join(dir, 'users.txt'),
    `${await line('app', PW.app)}\n${await line('admin', PW.admin)}\n${await line('watcher', PW.watcher)}\n`,
  );
  writeFileSync(join(dir, 'hba.conf'), 'host all all 127.0.0.1/32 scram-sha-256\n');
  p = await startPostern(config(), dir);
  base = `http://127.0.0.1:${p.postern.adminPort}/`;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
});

after(async () => {
  await browser?.close();
  await p?.close();
  await cluster?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('dashboard', () => {
  test('a wrong password, or none, gets 401 and no data', async () => {
    for (const path of ['', 'api/state', 'api/stream', 'assets/app.js']) {
      const none = await fetch(`${base}${path}`);
      assert.equal(none.status, 401, path);
      assert.match(none.headers.get('www-authenticate') ?? '', /^Basic /);
      const wrong = await fetch(`${base}${path}`, { headers: { authorization: auth('admin', 'not-the-password') } });
      assert.equal(wrong.status, 401, path);
      const body = await wrong.text();
      assert.doesNotMatch(body, /pools|appdb|abalance/);
    }
    // A client user (not an admin role) with its right password is refused too.
    assert.equal((await fetch(`${base}api/state`, { headers: { authorization: auth('app', PW.app) } })).status, 401);
    const ok = await fetch(`${base}api/state`, { headers: { authorization: auth('watcher', PW.watcher) } });
    assert.equal(ok.status, 200);
    const csp = ok.headers.get('content-security-policy') ?? '';
    assert.match(csp, /script-src 'self'/);
    assert.doesNotMatch(csp, /unsafe-inline/);
    assert.equal(ok.headers.get('x-frame-options'), 'DENY');
    const text = await ok.text();
    for (const secret of Object.values(PW)) assert.ok(!text.includes(secret), 'no secret reaches the page');
    assert.doesNotMatch(text, /SCRAM-SHA-256\$/);
  });

  test('after pgbench: live chart points, and tiles and tables agree with SHOW POOLS, SHOW SERVERS and SHOW QUERIES', async () => {
    const { page, errors, close } = await open('admin', PW.admin);
    try {
      const bench = pgbench(6);
      const done = new Promise<number | null>((r) => bench.once('exit', r));
      const p0 = await points(page);
      await waitUntil(async () => Number((await tileValue(page, 'tps')).replace(/,/g, '')) > 0, 15_000, 'a non-zero tps tile');
      const p1 = await points(page);
      await new Promise((r) => setTimeout(r, 2500));
      const p2 = await points(page);
      assert.ok(p2 > p1 && p1 >= p0, `chart points grow while pgbench runs (${p0}, ${p1}, ${p2})`);
      assert.equal(await done, 0);
      // Two idle clients stay connected, so the pools have clients to count.
      const held = [0, 1].map(() => new pg.Client({ host: '127.0.0.1', port: p.port, user: 'app', password: PW.app, database: 'appdb' }));
      for (const c of held) await c.connect();
      try {
        for (const c of held) await c.query('select 1');
        await waitUntil(
          async () => {
            const [pools, page_pools] = [await show('POOLS'), await tableRows(page, 't-pools')];
            const want = pools.find((r) => r.database === 'appdb' && r.user === 'app');
            const got = page_pools.find((r) => r.database === 'appdb' && r.user === 'app');
            if (want === undefined || got === undefined) return false;
            return ['cl_active', 'cl_waiting', 'sv_active', 'sv_idle', 'sv_used', 'sv_login'].every((k) => want[k] === got[k]);
          },
          15_000,
          'the pools table shows SHOW POOLS',
        );
        // The two held clients (pgbench's and the console's own short sessions leave within a tick or two).
        await waitUntil(async () => (await tileValue(page, 'cl_active')) === '2', 10_000, 'the cl_active tile shows the two held clients');
        await waitUntil(
          async () => {
            const servers = (await show('SERVERS')).length;
            return servers === (await tableRows(page, 't-servers')).length && String(servers) === (await tileValue(page, 'servers'));
          },
          15_000,
          'the servers table and tile count SHOW SERVERS',
        );
        await waitUntil(
          async () => {
            const queries = await show('QUERIES');
            const shapes = await tableRows(page, 't-shapes');
            const bench = queries.filter((q) => q.application_name === 'pgbench');
            if (bench.length === 0) return false;
            return bench.every((q) =>
              shapes.some(
                (s) => s.fingerprint === q.fingerprint && s.user === q.user && s.application_name === 'pgbench' && s.calls === q.calls,
              ),
            );
          },
          15_000,
          'the shapes table has SHOW QUERIES calls per shape',
        );
        const benchShape = (await tableRows(page, 't-shapes')).find(
          (s) => s.query === 'SELECT abalance FROM pgbench_accounts WHERE aid = $1',
        );
        assert.ok(benchShape !== undefined && Number(benchShape.calls) > 0);
        // The detail view of a shape.
        await page.locator('#t-shapes tbody tr', { hasText: 'pgbench_accounts' }).first().click();
        await page.locator('#shape[open]').waitFor();
        assert.equal(await page.locator('#shape-query').innerText(), 'SELECT abalance FROM pgbench_accounts WHERE aid = $1');
        assert.ok((await page.locator('#shape-hist .hrow').count()) > 0);
        await page.keyboard.press('Escape');
        mkdirSync(ARTIFACTS, { recursive: true });
        await page.screenshot({ path: join(ARTIFACTS, 'dashboard.png'), fullPage: true });
        assert.ok(existsSync(join(ARTIFACTS, 'dashboard.png')));
      } finally {
        for (const c of held) await c.end();
      }
      assert.deepEqual(errors, []);
    } finally {
      await close();
    }
  });

  test('a filter narrows the tables', async () => {
    const c = new pg.Client({
      host: '127.0.0.1',
      port: p.port,
      user: 'app',
      password: PW.app,
      database: 'appdb',
      application_name: 'filter-me',
    });
    await c.connect();
    await c.query('select 42 as answer');
    const { page, errors, close } = await open('admin', PW.admin);
    try {
      await waitUntil(
        async () => (await tableRows(page, 't-shapes')).some((s) => s.application_name === 'filter-me'),
        15_000,
        'the new shape',
      );
      const all = await tableRows(page, 't-shapes');
      assert.ok(all.some((s) => s.application_name !== 'filter-me'));
      await page.fill('#f-application', 'filter-me');
      const narrowed = await tableRows(page, 't-shapes');
      assert.ok(narrowed.length > 0 && narrowed.length < all.length, `${narrowed.length} of ${all.length}`);
      assert.ok(narrowed.every((s) => s.application_name === 'filter-me'));
      await page.fill('#f-database', 'no-such-db');
      assert.equal((await tableRows(page, 't-pools')).length, 0);
      assert.deepEqual(errors, []);
    } finally {
      await close();
      await c.end();
    }
  });

  test('a stats user sees no action, and a forged action request is refused', async () => {
    const { page, errors, close } = await open('watcher', PW.watcher);
    try {
      await page.locator('#t-pools table').waitFor();
      assert.equal(await page.locator('button.action:visible').count(), 0);
      assert.equal(await page.locator('#reload').isHidden(), true);
      assert.match(await page.locator('#who').innerText(), /stats only/);
      assert.deepEqual(errors, []);
    } finally {
      await close();
    }
    const headers = { 'content-type': 'application/json', 'x-postern-action': '1' };
    const body = JSON.stringify({ verb: 'PAUSE', database: 'appdb' });
    const stats = await fetch(`${base}api/action`, {
      method: 'POST',
      headers: { ...headers, authorization: auth('watcher', PW.watcher) },
      body,
    });
    assert.equal(stats.status, 403);
    // An admin's credentials without the page's header (what a cross-site form can send) are refused as well.
    const forged = await fetch(`${base}api/action`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: auth('admin', PW.admin) },
      body,
    });
    assert.equal(forged.status, 403);
    const cross = await fetch(`${base}api/action`, {
      method: 'POST',
      headers: { ...headers, authorization: auth('admin', PW.admin), origin: 'http://evil.example' },
      body,
    });
    assert.equal(cross.status, 403);
    assert.deepEqual(
      (await show('DATABASES')).filter((d) => d.name === 'appdb').map((d) => d.paused),
      ['0'],
    );
  });

  test('the stream survives RELOAD run from the page; PAUSE and RESUME go through the console path', async () => {
    const { page, errors, close } = await open('admin', PW.admin);
    try {
      await page.locator('#reload').click();
      await waitUntil(async () => /RELOAD the configuration: done/.test(await page.locator('#status').innerText()), 10_000, 'RELOAD done');
      const r0 = await page.evaluate(() => window.__postern?.renders ?? 0);
      await waitUntil(
        async () => (await page.evaluate(() => window.__postern?.renders ?? 0)) >= r0 + 2,
        10_000,
        'more stream events after RELOAD',
      );
      assert.equal(p.postern.ctx.config.admin.users[0], 'admin');
      await page.locator('#t-pools button[data-action="PAUSE"]').first().click();
      await waitUntil(async () => (await show('DATABASES')).find((d) => d.name === 'appdb')?.paused === '1', 10_000, 'appdb paused');
      await page.locator('#t-pools button[data-action="RESUME"]').first().click();
      await waitUntil(async () => (await show('DATABASES')).find((d) => d.name === 'appdb')?.paused === '0', 10_000, 'appdb resumed');
      assert.deepEqual(errors, []);
    } finally {
      await close();
    }
  });
});
