// The container image without Docker: the Dockerfile's runtime stage is
// replayed step by step into a throwaway folder standing in for the image's
// filesystem (the build context as .dockerignore leaves it, `npm ci
// --omit=dev` on that clean copy, dist/ from the build), the pod's
// /etc/postern is laid out from the Kubernetes ConfigMap and Secrets (real
// certificates and a users file in place of the placeholders; ports and the
// database host pointed at this machine), and the image's own command runs
// it as the image's user. Then: `postern check`, the HEALTHCHECK command,
// /readyz, psql through it with verify-full TLS and SCRAM, every metric the
// Grafana dashboard queries present in the real /metrics with the labels the
// dashboard uses, and the pod's shutdown sequence (preStop sleep while still
// serving, SIGTERM: /readyz 503 and /healthz 200 while sessions drain, exit 0).

import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, posix } from 'node:path';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { parseDocument, parse as parseYaml } from 'yaml';
import { type CertSet, generateCerts } from '../../src/dev/certs.ts';
import { freePort, type PgCluster, startPostgres } from '../../src/dev/cluster.ts';
import {
  buildContextFiles,
  copyArgs,
  DASHBOARD,
  dashboardQueries,
  filesUnder,
  loadManifests,
  type Obj,
  ops,
  parseExposition,
  posternContainer,
  promRefs,
  readDockerfile,
  type Stage,
  volumeFiles,
  writeVolume,
} from '../helpers/deploy.ts';
import { psql, run, waitUntil } from '../helpers/postern.ts';

const PASSWORD = 'deploy-test-pw';
const asRoot = process.getuid?.() === 0;

let dir: string;
let certs: CertSet;
let cluster: PgCluster;
const children: ChildProcess[] = [];

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'postern-image-'));
  chmodSync(dir, 0o755); // the image's user must reach the files below
  certs = await generateCerts(join(dir, 'certs'), { serverNames: ['localhost', '127.0.0.1'] });
  cluster = await startPostgres({
    tls: { cert: certs.server.cert, key: certs.server.key },
    users: [{ name: 'app', password: PASSWORD }],
    databases: [{ name: 'appdb', owner: 'app' }],
  });
});

after(async () => {
  for (const c of children) c.kill('SIGKILL');
  await cluster?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

interface Image {
  root: string;
  workdir: string;
  env: Record<string, string>;
  user: { uid: number; gid: number } | undefined;
  entrypoint: string[];
  cmd: string[];
  healthcheck: string[];
}

/** Copies `from` (a file or a folder's files) to `to` with COPY's rules for one source. */
function copyInto(files: string[], srcRoot: string, src: string, dest: string, destIsDir: boolean): number {
  const s = src.replace(/^\.\//, '').replace(/\/$/, '');
  let n = 0;
  for (const f of files) {
    let target: string;
    if (f === s) target = destIsDir ? join(dest, posix.basename(f)) : dest;
    else if (f.startsWith(`${s}/`)) target = join(dest, f.slice(s.length + 1));
    else continue;
    mkdirSync(dirname(target), { recursive: true });
    copyFileSync(join(srcRoot, f), target);
    n++;
  }
  return n;
}

/**
 * Replays the final stage of the Dockerfile into `root`. COPY from the build
 * context takes the files .dockerignore lets through; COPY --from=<build
 * stage> takes the repository's own build output (npm test builds dist/ with
 * the same `npm run build` the stage runs); RUN runs the same command with sh.
 * An instruction this replay does not know fails the test, so the Dockerfile
 * and its check cannot drift apart silently.
 */
async function replay(stages: Stage[], root: string): Promise<Image> {
  const stage = stages[stages.length - 1] as Stage;
  const context = buildContextFiles();
  const img: Image = { root, workdir: '/', env: {}, user: undefined, entrypoint: [], cmd: [], healthcheck: [] };
  const cleanEnv: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('npm_')) cleanEnv[k] = v;
  for (const ins of stage.instructions) {
    const here = join(root, img.workdir);
    switch (ins.op) {
      case 'ENV':
        for (const m of ins.rest.matchAll(/(\w+)=("[^"]*"|\S+)/g)) img.env[m[1] as string] = (m[2] as string).replace(/^"|"$/g, '');
        break;
      case 'WORKDIR':
        img.workdir = posix.resolve(img.workdir, ins.rest);
        mkdirSync(join(root, img.workdir), { recursive: true });
        break;
      case 'COPY': {
        const { sources, dest } = copyArgs(ins);
        const to = join(root, posix.resolve(img.workdir, dest));
        const destIsDir = dest.endsWith('/') || sources.length > 1;
        for (const src of sources) {
          let n: number;
          if (ins.flags.from !== undefined) {
            const build = stages.find((s) => s.name === ins.flags.from);
            assert.ok(build !== undefined, `COPY --from=${ins.flags.from}: no such stage`);
            const buildDir = ops(build, 'WORKDIR').pop()?.rest ?? '/';
            assert.ok(
              src.startsWith(`${buildDir}/`),
              `COPY --from=${ins.flags.from} ${src}: expected under the stage's WORKDIR ${buildDir}`,
            );
            const rel = src.slice(buildDir.length + 1);
            const outDir = (JSON.parse(readFileSync('tsconfig.build.json', 'utf8')) as { compilerOptions: { outDir: string } })
              .compilerOptions.outDir;
            assert.equal(rel, outDir, 'what the build stage produces is the outDir of `npm run build`');
            n = copyInto(
              filesUnder(rel).map((f) => `${rel}/${f}`),
              '.',
              rel,
              to,
              destIsDir,
            );
          } else {
            n = copyInto(context, '.', src, to, destIsDir);
          }
          assert.ok(n > 0, `COPY ${src} (Dockerfile line ${ins.line}) copied nothing`);
        }
        break;
      }
      case 'RUN': {
        const r = await run('sh', ['-c', `cd "${here}" && ${ins.exec ? ins.exec.join(' ') : ins.rest}`], {
          env: { ...cleanEnv, ...img.env },
          timeoutMs: 120_000,
        });
        assert.equal(r.code, 0, `RUN ${ins.rest} (Dockerfile line ${ins.line}):\n${r.stdout}\n${r.stderr}`);
        break;
      }
      case 'USER': {
        const [u, g] = ins.rest.split(':').map(Number);
        img.user = { uid: u as number, gid: g ?? (u as number) };
        break;
      }
      case 'ENTRYPOINT':
        img.entrypoint = ins.exec ?? [];
        break;
      case 'CMD':
        img.cmd = ins.exec ?? [];
        break;
      case 'HEALTHCHECK':
        img.healthcheck = ins.exec ?? [];
        break;
      case 'EXPOSE':
        break; // checked statically (test/unit/deploy.test.ts)
      default:
        assert.fail(`Dockerfile line ${ins.line}: the replay does not know ${ins.op}; teach it`);
    }
  }
  return img;
}

/** Runs argv in the image: node is this node, absolute paths live under root, as the image's user. */
function inImage(img: Image, argv: string[]): ChildProcess {
  const [cmd, ...args] = argv;
  const mapped = args.map((a) => (a.startsWith('/') ? join(img.root, a) : a));
  const child = spawn(cmd === 'node' ? process.execPath : (cmd as string), mapped, {
    cwd: join(img.root, img.workdir),
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: '/tmp', ...img.env },
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(asRoot && img.user ? { uid: img.user.uid, gid: img.user.gid } : {}),
  });
  children.push(child);
  return child;
}

function finish(child: ChildProcess): Promise<{ code: number | null; out: string }> {
  let out = '';
  child.stdout?.on('data', (d: Buffer) => {
    out += d.toString();
  });
  child.stderr?.on('data', (d: Buffer) => {
    out += d.toString();
  });
  return new Promise((resolve) => child.on('exit', (code) => resolve({ code, out })));
}

async function get(port: number, path: string): Promise<{ status: number; body: string }> {
  try {
    const r = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(3000) });
    return { status: r.status, body: await r.text() };
  } catch {
    return { status: 0, body: '' };
  }
}

function connects(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** Writes raw bytes to the client port and waits for the close. */
function sendRaw(port: number, bytes: Buffer): Promise<void> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port }, () => s.write(bytes));
    s.on('data', () => {});
    s.once('close', () => resolve());
    s.once('error', () => resolve());
    setTimeout(() => s.destroy(), 3000).unref();
  });
}

test('the image, replayed from the Dockerfile, runs the Kubernetes config: check, health, TLS + SCRAM through psql, dashboard metrics, drain', async () => {
  const manifests = loadManifests();
  const { deployment, container } = posternContainer(manifests);
  const { stages } = readDockerfile();
  const img = await replay(stages, join(dir, 'image'));

  // The runtime has production dependencies only.
  const modules = join(img.root, img.workdir, 'node_modules');
  for (const m of ['pino', 'prom-client', 'yaml', 'zod', 'libpg-query']) assert.ok(existsSync(join(modules, m)), `${m} installed`);
  for (const m of ['typescript', 'pg', '@biomejs', 'kubernetes-models', 'fast-check'])
    assert.ok(!existsSync(join(modules, m)), `${m} (dev) not installed`);
  assert.ok(!existsSync(join(img.root, img.workdir, 'test')) && !existsSync(join(img.root, img.workdir, 'src')), 'no sources or tests');

  // The pod's config volume, with this machine's ports, database and secrets.
  const [clientPort, adminPort] = [await freePort(), await freePort()];
  const mount = (container.volumeMounts as Obj[]).find((m) => m.mountPath === '/etc/postern') as Obj;
  const files = volumeFiles(manifests, deployment, mount);
  const cfgFile = files.find((f) => f.path === posix.join(mount.mountPath, 'postern.yaml'));
  assert.ok(cfgFile !== undefined);
  const shipped = parseYaml(cfgFile.content) as Obj;
  const dbName = Object.keys(shipped.databases)[0] as string;
  const shippedAdminPort = Number(String(shipped.admin.listen).split(':').pop());
  const doc = parseDocument(cfgFile.content);
  doc.setIn(['listen', 'host'], '127.0.0.1'); // 0.0.0.0 in the pod; loopback on a shared machine
  doc.setIn(['listen', 'port'], clientPort);
  doc.setIn(['admin', 'listen'], `127.0.0.1:${adminPort}`);
  doc.setIn(['databases', dbName, 'host'], '127.0.0.1');
  doc.setIn(['databases', dbName, 'port'], cluster.port);
  cfgFile.content = doc.toString();
  const verifier = await cluster.psql("select rolpassword from pg_authid where rolname = 'app'");
  assert.match(verifier, /^SCRAM-SHA-256\$/);
  const real: Record<string, string> = {
    [shipped.tls.cert]: readFileSync(certs.server.cert, 'utf8'),
    [shipped.tls.key]: readFileSync(certs.server.key, 'utf8'),
    [shipped.databases[dbName].tls.ca]: readFileSync(certs.ca.cert, 'utf8'),
    [shipped.auth.users_file]: `"app" "${verifier}"\n`,
    [shipped.cluster.secret_file]: 'deploy-test-cluster-secret-0123456789\n',
  };
  for (const f of files) {
    const rel = posix.relative(mount.mountPath, f.path);
    if (real[rel] !== undefined) f.content = real[rel] as string;
    assert.doesNotMatch(f.content, /REPLACE-ME/, `${f.path}: every placeholder is replaced for the test`);
  }
  writeVolume(img.root, files, deployment.spec.template.spec.securityContext?.fsGroup);

  // postern check, as `docker run IMAGE check --config ...` would run it.
  const check = await finish(inImage(img, [...img.entrypoint, 'check', ...img.cmd]));
  assert.equal(check.code, 0, check.out);

  const proc = inImage(img, [...img.entrypoint, ...img.cmd]);
  const exited = finish(proc);
  try {
    // The image's HEALTHCHECK, on this run's admin port.
    const hc = img.healthcheck.map((a) => a.replaceAll(`:${shippedAdminPort}/`, `:${adminPort}/`));
    assert.notDeepEqual(hc, img.healthcheck, 'the HEALTHCHECK targets admin.listen’s port');
    await waitUntil(async () => (await finish(inImage(img, hc))).code === 0, 20_000, 'the HEALTHCHECK command to pass');

    const ready = await waitUntil(
      async () => {
        const r = await get(adminPort, '/readyz');
        return r.status === 200 ? r : null;
      },
      10_000,
      '/readyz 200',
    );
    assert.deepEqual(JSON.parse(ready.body), { ready: true, listening: true, servers: { [dbName]: true } });

    // Through Postern: verify-full TLS to Postern, SCRAM at Postern, SCRAM passthrough and verify-full TLS to the server.
    const conn = `host=localhost port=${clientPort} dbname=${dbName} user=app sslmode=verify-full sslrootcert=${certs.ca.cert}`;
    const ok = await psql(
      conn,
      [
        '-c',
        "select current_user || ' via ' || coalesce((select ssl::text from pg_stat_ssl where pid = pg_backend_pid()), '?')",
        '-c',
        'select 40 + 2',
      ],
      {
        password: PASSWORD,
      },
    );
    assert.equal(ok.code, 0, ok.stderr);
    assert.deepEqual(ok.stdout.trim().split('\n'), ['app via true', '42']);
    // A few more things for the counters the dashboard shows.
    // LISTEN pins its server connection, which is closed after use; the next statement opens a new one that stays idle.
    const pinned = await psql(conn, 'listen deploy_test', { password: PASSWORD });
    assert.equal(pinned.code, 0, pinned.stderr);
    const failing = await psql(conn, 'select 1/0', { password: PASSWORD });
    assert.match(failing.stderr, /division by zero/);
    const wrong = await psql(conn, 'select 1', { password: 'not-the-password' });
    assert.match(wrong.stderr, /password authentication failed/);
    const plain = await psql(`host=127.0.0.1 port=${clientPort} dbname=${dbName} user=app sslmode=disable`, 'select 1', {
      password: PASSWORD,
    });
    assert.notEqual(plain.code, 0, 'tls.mode require refuses plaintext');
    const cancel = Buffer.alloc(16);
    cancel.writeInt32BE(16, 0);
    cancel.writeInt32BE(80877102, 4);
    cancel.writeInt32BE(12345, 8);
    cancel.writeInt32BE(67890, 12);
    await sendRaw(clientPort, cancel);
    await sendRaw(clientPort, Buffer.from([0, 0, 0, 3, 0, 0, 0, 0]));

    // Every metric and label the dashboard queries is in the real /metrics.
    const metrics = await get(adminPort, '/metrics');
    assert.equal(metrics.status, 200);
    const { families, samples } = parseExposition(metrics.body);
    // Prometheus adds these target labels to every scraped series.
    const targetLabels = new Set(['instance', 'job']);
    const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as Obj;
    const withoutSamples = new Set<string>();
    const problems: string[] = [];
    for (const q of dashboardQueries(dashboard)) {
      const refs = promRefs(q.expr);
      const seen = new Set<string>();
      for (const m of refs.metrics) {
        const base = m.name.replace(/_(bucket|sum|count)$/, '');
        const declared = families.has(m.name) || (families.get(base) === 'histogram' && base !== m.name);
        if (!declared && !samples.has(m.name)) {
          problems.push(`${q.where}: ${m.name} is not in /metrics`);
          continue;
        }
        const labels = samples.get(m.name);
        if (labels === undefined) {
          withoutSamples.add(m.name);
          continue;
        }
        for (const l of labels) seen.add(l);
        for (const l of m.matcherLabels)
          if (!targetLabels.has(l) && !labels.has(l)) problems.push(`${q.where}: ${m.name} has no label ${l}`);
      }
      if (seen.size > 0) {
        for (const l of [...refs.groupingLabels, ...(refs.valuesLabel ? [refs.valuesLabel] : [])]) {
          if (!targetLabels.has(l) && !seen.has(l)) problems.push(`${q.where}: no metric of "${q.expr}" has label ${l}`);
        }
      }
    }
    assert.deepEqual(problems, []);
    // Only a paused database makes postern_paused samples (PAUSE needs an admin user the config does not define).
    const unsampled = [...withoutSamples].filter((m) => m !== 'postern_paused');
    assert.deepEqual(unsampled, [], 'every other metric the dashboard queries has samples here, so its labels were checked');
    assert.ok(
      samples.has('postern_cancels_total') && samples.has('postern_protocol_violations_total') && samples.has('postern_pins_total'),
    );

    // Shutdown as the kubelet does it: preStop first (Postern still serves), then SIGTERM (drain).
    const session = new pg.Client({
      host: '127.0.0.1',
      port: clientPort,
      user: 'app',
      password: PASSWORD,
      database: dbName,
      ssl: { ca: readFileSync(certs.ca.cert, 'utf8'), servername: 'localhost' },
    });
    session.on('error', () => {});
    await session.connect();
    const preStop = container.lifecycle.preStop.exec.command as string[];
    const t0 = Date.now();
    const hook = finish(inImage(img, preStop));
    await new Promise((r) => setTimeout(r, 500));
    assert.ok(await connects(clientPort), 'new connections are accepted during the preStop sleep');
    assert.equal((await get(adminPort, '/readyz')).status, 200);
    assert.equal((await hook).code, 0, 'the preStop command runs in the image');
    assert.ok(Date.now() - t0 >= 1000, 'and sleeps');
    proc.kill('SIGTERM');
    await waitUntil(async () => (await get(adminPort, '/readyz')).status === 503, 5000, '/readyz 503 while draining');
    assert.equal((await get(adminPort, '/healthz')).status, 200, 'alive while draining: the liveness probe does not kill the drain');
    await waitUntil(async () => !(await connects(clientPort)), 5000, 'the client port closed');
    assert.equal((await session.query('select 7 as n')).rows[0].n, 7, 'an open session keeps working during the drain');
    await session.end();
    const t1 = Date.now();
    const end = await exited;
    assert.equal(end.code, 0, end.out);
    assert.ok(Date.now() - t1 < 5000, 'exits once the last session has left, well before shutdown_timeout');
    assert.doesNotMatch(end.out, new RegExp(PASSWORD));
  } finally {
    proc.kill('SIGKILL');
  }
});
