// Config: unit parsing, validation against the settings table (defaults,
// relative paths, every problem reported with its key path), the generated
// docs, and the `postern check` / --version / --help CLI on dist/main.js.

import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { renderConfigDocs } from '../../src/config/docs.ts';
import { type ConfigProblem, keepRestartSettings, loadConfigFile, validateConfig } from '../../src/config/load.ts';
import { SETTINGS } from '../../src/config/schema.ts';
import { parseDuration, parseSize } from '../../src/config/units.ts';

const tmp = mkdtempSync(join(tmpdir(), 'postern-config-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

// Readable stand-ins for PEM files (validation only checks readability).
mkdirSync(join(tmp, 'certs'));
for (const f of ['server.crt', 'server.key', 'certs/ca.pem', 'client.crt', 'client.key']) writeFileSync(join(tmp, f), 'x');

function problemsOf(raw: unknown, baseDir = tmp): ConfigProblem[] {
  const r = validateConfig(raw, baseDir);
  assert.equal(r.ok, false, 'expected problems');
  return r.ok ? [] : r.problems;
}
const paths = (ps: ConfigProblem[]) => ps.map((p) => p.path).sort();
const DB = { app: {} };

// ---------------------------------------------------------------- units

describe('parseDuration', () => {
  it('accepts units and bare numbers of seconds', () => {
    const cases: [unknown, number][] = [
      ['500ms', 500],
      ['15s', 15_000],
      ['1.5s', 1500],
      ['2min', 120_000],
      ['2m', 120_000],
      ['1h', 3_600_000],
      ['1d', 86_400_000],
      ['10 S', 10_000],
      [' 3s ', 3000],
      ['15', 15_000],
      ['0', 0],
      [15, 15_000],
      [0.25, 250],
      [0, 0],
    ];
    for (const [v, ms] of cases) assert.equal(parseDuration(v), ms, JSON.stringify(v));
  });

  it('rejects malformed values', () => {
    for (const v of [
      '',
      'abc',
      '-1s',
      '15x',
      '1e3s',
      's',
      '1.s',
      '15 s s',
      '1,5s',
      -1,
      Number.NaN,
      Number.POSITIVE_INFINITY,
      null,
      undefined,
      {},
      [],
      true,
    ]) {
      assert.equal(parseDuration(v), undefined, JSON.stringify(v));
    }
  });
});

describe('parseSize', () => {
  it('accepts units (case-insensitive) and bare numbers of bytes', () => {
    const cases: [unknown, number][] = [
      ['100', 100],
      ['100b', 100],
      ['64kB', 65_536],
      ['64KB', 65_536],
      ['10MB', 10 * 1024 ** 2],
      ['1GB', 1024 ** 3],
      ['1gb', 1024 ** 3],
      ['2TB', 2 * 1024 ** 4],
      [' 8 kB ', 8192],
      [1024, 1024],
      [0, 0],
    ];
    for (const [v, n] of cases) assert.equal(parseSize(v), n, JSON.stringify(v));
  });

  it('rejects malformed values', () => {
    for (const v of ['', '1.5GB', '-1', '-1kB', 'abc', '1PB', '64 kilobytes', 'kB', 1.5, -1, Number.NaN, null, {}, false]) {
      assert.equal(parseSize(v), undefined, JSON.stringify(v));
    }
  });
});

// ---------------------------------------------------------------- validateConfig

describe('validateConfig', () => {
  it('a minimal config gets every default', () => {
    const r = validateConfig({ databases: { app: {} } }, tmp);
    assert.ok(r.ok, JSON.stringify(r));
    const c = r.config;
    assert.deepEqual(c.listen, { host: '127.0.0.1', port: 6432 });
    assert.equal(c.tls.mode, 'allow');
    assert.equal(c.tls.cert, undefined);
    assert.equal(c.tls.direct_without_alpn, false);
    assert.equal(c.tls.min_version, 'TLSv1.2');
    assert.equal(c.limits.client_login_timeout, 15_000);
    assert.equal(c.limits.server_connect_timeout, 15_000);
    assert.equal(c.limits.shutdown_timeout, 30_000);
    assert.equal(c.limits.max_message_size, 1_073_741_824);
    assert.equal(c.log.level, 'info');
    assert.deepEqual(c.databases, {
      app: {
        host: '127.0.0.1',
        port: 5432,
        tls: { mode: 'prefer', direct: false },
        target_session_attrs: 'any',
        load_balance: 'round-robin',
        read_write_split: false,
        read_your_writes: false,
      },
    });
  });

  it('converts units and keeps given values', () => {
    const r = validateConfig(
      {
        listen: { host: '0.0.0.0', port: 7000 },
        limits: { client_login_timeout: '2min', max_message_size: '64MB', server_connect_timeout: 3 },
        databases: { a: { host: 'db1', port: 6000, dbname: 'real' }, b: { tls: { mode: 'disable' } } },
      },
      tmp,
    );
    assert.ok(r.ok, JSON.stringify(r));
    assert.equal(r.config.listen.port, 7000);
    assert.equal(r.config.limits.client_login_timeout, 120_000);
    assert.equal(r.config.limits.server_connect_timeout, 3000);
    assert.equal(r.config.limits.max_message_size, 64 * 1024 ** 2);
    assert.deepEqual(r.config.databases.a, {
      host: 'db1',
      port: 6000,
      dbname: 'real',
      tls: { mode: 'prefer', direct: false },
      target_session_attrs: 'any',
      load_balance: 'round-robin',
      read_write_split: false,
      read_your_writes: false,
    });
    assert.equal(r.config.databases.b?.tls.mode, 'disable');
  });

  it('reads several servers per database and a replica lag limit as bytes or a duration', () => {
    const r = validateConfig(
      {
        databases: {
          a: {
            servers: ['10.0.0.1:5433', { host: 'db2' }, '[::1]:6000', 'db3'],
            max_replica_lag: '16MB',
            target_session_attrs: 'read-write',
          },
          b: { max_replica_lag: '5s', load_balance: 'least-connections', read_write_split: true },
        },
      },
      tmp,
    );
    assert.ok(r.ok, JSON.stringify(r));
    assert.deepEqual(r.config.databases.a?.servers, [
      { host: '10.0.0.1', port: 5433 },
      { host: 'db2', port: 5432 },
      { host: '::1', port: 6000 },
      { host: 'db3', port: 5432 },
    ]);
    assert.deepEqual(r.config.databases.a?.max_replica_lag, { bytes: 16 * 1024 ** 2 });
    assert.equal(r.config.databases.a?.target_session_attrs, 'read-write');
    assert.deepEqual(r.config.databases.b?.max_replica_lag, { ms: 5000 });
    assert.equal(r.config.databases.b?.load_balance, 'least-connections');
    for (const bad of [{ servers: [] }, { servers: ['a:b:c'] }, { max_replica_lag: 'soon' }, { target_session_attrs: 'master' }]) {
      const x = validateConfig({ databases: { a: bad } }, tmp);
      assert.equal(x.ok, false, JSON.stringify(bad));
    }
  });

  it('resolves relative paths against baseDir and leaves absolute ones alone', () => {
    const abs = join(tmp, 'client.key');
    const r = validateConfig(
      {
        tls: { cert: 'server.crt', key: './server.key', ca: 'certs/ca.pem', mode: 'verify-ca' },
        databases: { app: { tls: { mode: 'verify-full', ca: 'certs/ca.pem', cert: 'client.crt', key: abs } } },
      },
      tmp,
    );
    assert.ok(r.ok, JSON.stringify(r));
    assert.equal(r.config.tls.cert, join(tmp, 'server.crt'));
    assert.equal(r.config.tls.key, join(tmp, 'server.key'));
    assert.equal(r.config.tls.ca, join(tmp, 'certs', 'ca.pem'));
    const db = r.config.databases.app;
    assert.equal(db?.tls.ca, join(tmp, 'certs', 'ca.pem'));
    assert.equal(db?.tls.cert, join(tmp, 'client.crt'));
    assert.equal(db?.tls.key, abs);
  });

  it('reports unknown keys by their own key path', () => {
    const ps = problemsOf({ bogus: 1, listen: { port: 6432, prot: 1 }, databases: { app: { tls: { mdoe: 'require' } } } });
    assert.deepEqual(paths(ps), ['bogus', 'databases.app.tls.mdoe', 'listen.prot']);
    for (const p of ps) assert.match(p.message, /unknown/i);
  });

  it('reports ALL problems at once, each with its path: type, unknown key, enum, cross-field', () => {
    const ps = problemsOf({
      listen: { port: 'six' },
      colour: 'blue',
      log: { level: 'loud' },
      tls: { mode: 'require' },
      limits: { client_login_timeout: 'soon' },
      databases: { app: { port: 70000, tls: { mode: 'verify-full' } } },
    });
    assert.deepEqual(paths(ps), [
      'colour',
      'databases.app.port',
      'databases.app.tls.ca',
      'limits.client_login_timeout',
      'listen.port',
      'log.level',
      'tls.mode',
    ]);
    const by = new Map(ps.map((p) => [p.path, p.message]));
    assert.match(by.get('tls.mode') ?? '', /tls\.cert/);
    assert.match(by.get('limits.client_login_timeout') ?? '', /duration/);
    for (const p of ps) assert.ok(p.message.length > 0);
  });

  it('an invalid enum alone is not also reported by the cross-field checks', () => {
    const ps = problemsOf({ tls: { mode: 'verify-everything' }, databases: DB });
    assert.deepEqual(paths(ps), ['tls.mode']);
    assert.match(ps[0]?.message ?? '', /verify-ca/);
  });

  it('cert without key, and key without cert', () => {
    assert.deepEqual(paths(problemsOf({ tls: { cert: 'server.crt' }, databases: DB })), ['tls.key']);
    assert.deepEqual(paths(problemsOf({ tls: { key: 'server.key' }, databases: DB })), ['tls.cert']);
    assert.deepEqual(paths(problemsOf({ databases: { app: { tls: { cert: 'client.crt' } } } })), ['databases.app.tls.cert']);
  });

  it('verify-ca / verify-full without a ca', () => {
    const tls = { cert: 'server.crt', key: 'server.key' };
    assert.deepEqual(paths(problemsOf({ tls: { ...tls, mode: 'verify-ca' }, databases: DB })), ['tls.ca']);
    assert.deepEqual(paths(problemsOf({ tls: { ...tls, mode: 'verify-full' }, databases: DB })), ['tls.ca']);
    assert.ok(validateConfig({ tls: { ...tls, mode: 'require' }, databases: DB }, tmp).ok);
    assert.deepEqual(paths(problemsOf({ databases: { app: { tls: { mode: 'verify-ca' } } } })), ['databases.app.tls.ca']);
  });

  it('an unreadable (missing) file is reported with its resolved path', () => {
    const ps = problemsOf({ tls: { cert: 'nope/missing.crt', key: 'server.key' }, databases: DB });
    assert.deepEqual(paths(ps), ['tls.cert']);
    assert.ok(ps[0]?.message.includes(join(tmp, 'nope', 'missing.crt')), ps[0]?.message);
    const db = problemsOf({ databases: { app: { tls: { mode: 'verify-ca', ca: 'gone.pem' } } } });
    assert.deepEqual(paths(db), ['databases.app.tls.ca']);
  });

  it('no databases is a problem', () => {
    assert.deepEqual(paths(problemsOf({ databases: {} })), ['databases']);
    assert.deepEqual(paths(problemsOf({})), ['databases']);
    assert.deepEqual(paths(problemsOf(null)), ['databases']);
    assert.deepEqual(paths(problemsOf({ listen: { port: -1 } })), ['databases', 'listen.port']);
  });

  it('wrong shapes: a section that is not an object, a non-object root', () => {
    assert.deepEqual(paths(problemsOf({ listen: 5, databases: DB })), ['listen']);
    assert.deepEqual(paths(problemsOf({ databases: { app: 'localhost' } })), ['databases.app']);
    assert.deepEqual(paths(problemsOf(42)), ['']);
    assert.deepEqual(paths(problemsOf('listen: 1')), ['']);
  });
});

describe('cluster.*', () => {
  const peers = [
    { id: 1, host: '10.0.0.1' },
    { id: 2, host: '10.0.0.2', port: 7432 },
  ];
  it('peers with an instance id and a secret are valid; a peer port defaults to 6432', () => {
    const r = validateConfig({ cluster: { instance_id: 1, peers, secret: 's'.repeat(16) }, databases: DB }, tmp);
    assert.ok(r.ok);
    assert.deepEqual(r.ok && r.config.cluster.peers.map((p) => p.port), [6432, 7432]);
  });
  it('peers need a secret of 16 characters and this instance id; ids are unique and 0 to 255', () => {
    assert.deepEqual(paths(problemsOf({ cluster: { instance_id: 1, peers }, databases: DB })), ['cluster.secret']);
    assert.deepEqual(paths(problemsOf({ cluster: { instance_id: 1, peers, secret: 'short' }, databases: DB })), ['cluster.secret']);
    assert.deepEqual(paths(problemsOf({ cluster: { peers, secret: 's'.repeat(16) }, databases: DB })), ['cluster.instance_id']);
    assert.deepEqual(
      paths(problemsOf({ cluster: { instance_id: 1, peers: [peers[0], peers[0]], secret: 's'.repeat(16) }, databases: DB })),
      ['cluster.peers.1.id'],
    );
    assert.ok(problemsOf({ cluster: { instance_id: 256 }, databases: DB }).some((p) => p.path === 'cluster.instance_id'));
  });
  it('secret_file is read into cluster.secret (trimmed); not together with secret; unreadable is a problem', () => {
    writeFileSync(join(tmp, 'cluster-secret'), '  from-a-file-0123456789\n');
    const r = validateConfig({ cluster: { peers_dns: 'peers:6432', secret_file: 'cluster-secret' }, databases: DB }, tmp);
    assert.ok(r.ok);
    assert.equal(r.ok && r.config.cluster.secret, 'from-a-file-0123456789');
    assert.deepEqual(paths(problemsOf({ cluster: { secret: 's'.repeat(16), secret_file: 'cluster-secret' }, databases: DB })), [
      'cluster.secret_file',
    ]);
    assert.ok(
      problemsOf({ cluster: { peers_dns: 'peers:6432', secret_file: 'missing' }, databases: DB }).some(
        (p) => p.path === 'cluster.secret_file',
      ),
    );
  });
  it('peers_dns is name:port and needs the secret too; it does not need an instance id', () => {
    assert.ok(validateConfig({ cluster: { peers_dns: 'postern-peers.db.svc:6432', secret: 's'.repeat(16) }, databases: DB }, tmp).ok);
    assert.deepEqual(paths(problemsOf({ cluster: { peers_dns: 'postern-peers.db.svc:6432' }, databases: DB })), ['cluster.secret']);
    assert.ok(
      problemsOf({ cluster: { peers_dns: 'no-port', secret: 's'.repeat(16) }, databases: DB }).some((p) => p.path === 'cluster.peers_dns'),
    );
  });
});

describe('keepRestartSettings', () => {
  const parse = (raw: Record<string, unknown>) => {
    const r = validateConfig({ databases: DB, ...raw }, tmp);
    assert.ok(r.ok, JSON.stringify(!r.ok && r.problems));
    return r.config;
  };
  it('restart-only settings keep their running values and are named; reloadable ones change', () => {
    const running = parse({ listen: { port: 6432 }, workers: 1, log: { level: 'info' }, pool: { default_pool_size: 5 } });
    const loaded = parse({ listen: { port: 7000 }, workers: 2, log: { level: 'debug' }, pool: { default_pool_size: 9 } });
    const { config, unapplied } = keepRestartSettings(running, loaded);
    assert.deepEqual(unapplied.sort(), ['listen.port', 'workers']);
    assert.equal(config.listen.port, 6432);
    assert.equal(config.workers, 1);
    assert.equal(config.log.level, 'debug');
    assert.equal(config.pool.default_pool_size, 9);
    assert.equal(loaded.listen.port, 7000, 'the loaded config is not changed');
    assert.deepEqual(keepRestartSettings(running, running).unapplied, []);
  });
  it('admin.tls files reload, but turning HTTPS on needs a restart', () => {
    const plain = parse({ admin: { listen: '127.0.0.1:9187' } });
    const https = parse({ admin: { listen: '127.0.0.1:9187', tls: { cert: 'server.crt', key: 'server.key' } } });
    const on = keepRestartSettings(plain, https);
    assert.deepEqual(on.unapplied, ['admin.tls']);
    assert.equal(on.config.admin.tls.cert, undefined);
    const moved = parse({ admin: { listen: '127.0.0.1:9187', tls: { cert: 'client.crt', key: 'client.key' } } });
    const swap = keepRestartSettings(https, moved);
    assert.deepEqual(swap.unapplied, []);
    assert.equal(swap.config.admin.tls.cert, join(tmp, 'client.crt'));
  });
});

describe('loadConfigFile', () => {
  it('reads YAML and resolves paths against the file folder', () => {
    const dir = join(tmp, 'certs');
    const file = join(dir, 'postern.yaml');
    writeFileSync(file, 'tls:\n  mode: verify-ca\n  cert: ../server.crt\n  key: ../server.key\n  ca: ca.pem\ndatabases:\n  app: {}\n');
    const r = loadConfigFile(file);
    assert.ok(r.ok, JSON.stringify(r));
    assert.equal(r.config.tls.ca, join(dir, 'ca.pem'));
    assert.equal(r.config.tls.cert, join(tmp, 'server.crt'));
  });

  it('a missing file, bad YAML and an empty file are problems, not exceptions', () => {
    const missing = loadConfigFile(join(tmp, 'does-not-exist.yaml'));
    assert.ok(!missing.ok && /cannot read/.test(missing.problems[0]?.message ?? ''));
    const bad = join(tmp, 'bad.yaml');
    writeFileSync(bad, 'listen: [1, 2\n');
    const b = loadConfigFile(bad);
    assert.ok(!b.ok && /YAML/.test(b.problems[0]?.message ?? ''));
    const empty = join(tmp, 'empty.yaml');
    writeFileSync(empty, '');
    const e = loadConfigFile(empty);
    assert.ok(!e.ok);
    assert.deepEqual(paths(e.problems), ['databases']);
  });
});

// ---------------------------------------------------------------- docs

describe('renderConfigDocs', () => {
  const md = renderConfigDocs();
  it('has one row for every SETTINGS key, with its default and enum options', () => {
    const documented = SETTINGS.filter((s) => !s.mirror);
    for (const s of documented) {
      const row = md.split('\n').find((l) => l.startsWith(`| \`${s.key}\` |`));
      assert.ok(row, `row for ${s.key}`);
      if (typeof s.default === 'string' || typeof s.default === 'number')
        assert.ok(row.includes(`\`${s.default}\``), `default of ${s.key}`);
      const opts = (s.schema as { options?: readonly string[] }).options;
      if (s.kind === 'enum' && opts) for (const o of opts) assert.ok(row.includes(`\`${o}\``), `${s.key} option ${o}`);
    }
    const rows = md.split('\n').filter((l) => /^\| `[a-z_*.]+` \|/.test(l));
    assert.equal(rows.length, documented.length);
  });
});

// ---------------------------------------------------------------- CLI

describe('CLI (dist/main.js)', () => {
  const root = fileURLToPath(new URL('../../..', import.meta.url)); // build/test/unit -> repo root
  const main = join(root, 'dist', 'main.js');
  const node = (...args: string[]) => spawnSync(process.execPath, [main, ...args], { encoding: 'utf8', timeout: 20_000, cwd: tmp });

  function newestSource(dir: string): number {
    let t = 0;
    for (const name of readdirSync(dir)) {
      const p = join(dir, name);
      const st = statSync(p);
      t = Math.max(t, st.isDirectory() ? newestSource(p) : name.endsWith('.ts') ? st.mtimeMs : 0);
    }
    return t;
  }

  before(() => {
    // `npm test` builds dist first; when run by hand, rebuild a missing or stale dist
    // (tsc still emits when unrelated files fail to type-check, so ignore its exit code).
    const srcTime = Math.max(newestSource(join(root, 'src', 'config')), statSync(join(root, 'src', 'main.ts')).mtimeMs);
    if (!existsSync(main) || statSync(main).mtimeMs < srcTime) {
      try {
        execFileSync('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: root, stdio: 'ignore' });
      } catch {
        // checked below
      }
    }
    assert.ok(existsSync(main), 'dist/main.js exists (run `npm run build`)');
  });

  it('check on a good file exits 0', () => {
    const file = join(tmp, 'good.yaml');
    writeFileSync(
      file,
      'listen:\n  port: 7432\ndatabases:\n  app:\n    host: db.internal\n    port: 5433\nlimits:\n  client_login_timeout: 5s\n',
    );
    const r = node('check', '--config', file);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /OK/);
  });

  it('check on a bad file exits 1 and lists every problem by key path', () => {
    const file = join(tmp, 'bad-config.yaml');
    writeFileSync(
      file,
      [
        'listen:',
        '  port: not-a-port',
        'bogus_top: 1',
        'tls:',
        '  mode: require',
        'log:',
        '  level: loud',
        'databases:',
        '  app:',
        '    tls:',
        '      mode: verify-full',
        '',
      ].join('\n'),
    );
    const r = node('check', '--config', file);
    assert.equal(r.status, 1, r.stdout + r.stderr);
    for (const p of ['listen.port', 'bogus_top', 'tls.mode', 'log.level', 'databases.app.tls.ca']) {
      assert.ok(
        r.stderr.split('\n').some((l) => l.trim().startsWith(`${p}:`)),
        `stderr names ${p}:\n${r.stderr}`,
      );
    }
    assert.match(r.stderr, /5 problem\(s\)/);
  });

  it('check on a missing file exits 1; check without --config exits non-zero', () => {
    const r = node('check', '--config', join(tmp, 'nope.yaml'));
    assert.equal(r.status, 1);
    assert.match(r.stderr, /cannot read/);
    const r2 = node('check');
    assert.notEqual(r2.status, 0);
    assert.match(r2.stderr, /--config/);
  });

  it('--version prints the package.json version', () => {
    const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string };
    const r = node('--version');
    assert.equal(r.status, 0);
    assert.equal(r.stdout.trim(), pkg.version);
  });

  it('--help exits 0 and prints usage', () => {
    const r = node('--help');
    assert.equal(r.status, 0);
    assert.match(r.stdout, /Usage:/);
    assert.match(r.stdout, /check --config/);
  });
});

it('the logger redacts every secret setting by the settings table, wherever a config object is logged', async () => {
  const { Writable } = await import('node:stream');
  const { createLogger, REDACT_PATHS } = await import('../../src/observability/log.ts');
  const { SECRET_KEYS } = await import('../../src/config/schema.ts');
  assert.ok(SECRET_KEYS.size >= 3);
  for (const k of SECRET_KEYS) assert.ok(REDACT_PATHS.includes(`*.*.${k.split('.').pop()}`), k);
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(chunk.toString());
      cb();
    },
  });
  const log = createLogger('info', sink);
  log.info({ config: { databases: { appdb: { server_password: 'leak-1' } }, auth: { query_password: 'leak-2' } } }, 'config');
  log.info({ users: { bob: { server_password: 'leak-3' } } }, 'users');
  await new Promise((r) => setImmediate(r));
  const out = lines.join('');
  assert.ok(out.includes('[redacted]'));
  assert.doesNotMatch(out, /leak-\d/);
});
