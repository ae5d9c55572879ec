// What the conformance suites talk to: a throwaway PostgreSQL (the dev kit in
// dist/dev) and Postern as its users run it (the built CLI with a config
// file), in one of the three ways the suites compare: direct, session mode
// with auth passthrough, transaction mode with Postern's own auth.

import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { open, readFile, writeFile } from 'node:fs/promises';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

export const MODES = ['direct', 'session', 'transaction'];

const READY_TIMEOUT_MS = 30_000;

/** The dev kit's cluster API, from the build (npm run build). */
export async function devKit(root) {
  return import(pathToFileURL(join(root, 'dist/dev/cluster.js')).href);
}

/** The role node-postgres's tests log in as: MD5, as in its own CI (its low-level Connection tests answer only cleartext and MD5). */
export const PG_TEST_USER = 'node_pg';
/** The role of node-postgres's SCRAM tests (client/sasl-scram-tests.js, skipped without it). */
export const SCRAM_TEST_USER = 'scram_test';

/**
 * A cluster for one mode's runs. The superuser logs in with SCRAM (its
 * password is what passthrough relays and what Postern holds in transaction
 * mode); PG_TEST_USER (a superuser, MD5) and SCRAM_TEST_USER (SCRAM) serve
 * node-postgres's tests; `databases` are created for the suites that need
 * their own. Resolves { cluster, passwords: { [role]: password }, verifiers }.
 */
export async function startCluster(root, databases) {
  const { startPostgres } = await devKit(root);
  const { randomBytes } = await import('node:crypto');
  const passwords = { [PG_TEST_USER]: randomBytes(12).toString('hex'), [SCRAM_TEST_USER]: randomBytes(12).toString('hex') };
  const cluster = await startPostgres({
    databases: databases.map((name) => ({ name })),
    hba: [`host all ${PG_TEST_USER} 127.0.0.1/32 md5`, 'host all all 127.0.0.1/32 scram-sha-256'],
    settings: {
      // The suites open many short sessions; logging each costs time and noise.
      log_connections: false,
      log_disconnections: false,
      // The regression suite's parallel groups run up to 20 sessions, and
      // through a pool each may briefly hold one more (clean-up, checks).
      max_connections: 100,
    },
  });
  try {
    // Through stdin-less -c: the passwords are random per run and the cluster is ours alone.
    await cluster.psql(
      `SET password_encryption = 'md5'; CREATE ROLE ${PG_TEST_USER} LOGIN SUPERUSER PASSWORD '${passwords[PG_TEST_USER]}'; ` +
        `SET password_encryption = 'scram-sha-256'; CREATE ROLE ${SCRAM_TEST_USER} LOGIN PASSWORD '${passwords[SCRAM_TEST_USER]}'`,
    );
    const secret = (role) => cluster.psql(`SELECT rolpassword FROM pg_authid WHERE rolname = '${role}'`);
    return {
      cluster,
      passwords,
      verifiers: { [SCRAM_TEST_USER]: await secret(SCRAM_TEST_USER), [PG_TEST_USER]: await secret(PG_TEST_USER) },
    };
  } catch (err) {
    await cluster.stop();
    throw err;
  }
}

/** uid/gid the server runs as (the dev kit runs it as 'postgres' when we are root): it writes the suites' COPY TO files. */
export function serverIdentity() {
  if (process.getuid?.() !== 0) return undefined;
  for (const name of ['postgres', 'nobody']) {
    for (const line of readFileSync('/etc/passwd', 'utf8').split('\n')) {
      const f = line.split(':');
      if (f[0] === name) return { uid: Number(f[2]), gid: Number(f[3]) };
    }
  }
  return undefined;
}

/**
 * Starts the built CLI in front of `cluster` for `databases`:
 *   session:     no hba file, so every client is relayed (passthrough) and
 *                keeps its own server connection, logged in by the server;
 *   transaction: Postern authenticates with the server's own secrets in a
 *                users file (SCRAM for SCRAM_TEST_USER, then SCRAM passthrough
 *                to the server; MD5 for PG_TEST_USER, answered to the server
 *                with the stored hash), and trust for the superuser, which
 *                Postern logs into the server with the password in the config,
 *                pool_mode transaction, `poolSize` per pool.
 * Resolves once the port accepts connections. stop() ends it (SIGTERM, then SIGKILL).
 */
export async function startPostern({ root, dir, mode, cluster, verifiers, databases, poolSize, port }) {
  const dbs = {};
  for (const name of databases) {
    dbs[name] = { host: cluster.host, port: cluster.port, tls: { mode: 'disable' } };
    if (mode === 'transaction') {
      dbs[name].pool_mode = 'transaction';
      dbs[name].pool_size = poolSize;
    }
  }
  const config = {
    listen: { host: '127.0.0.1', port },
    databases: dbs,
    pool: { max_client_conn: 1000 },
    log: { level: 'warn' },
  };
  if (mode === 'transaction') {
    const hba = join(dir, 'hba.conf');
    await writeFile(
      hba,
      `host all ${SCRAM_TEST_USER} 127.0.0.1/32 scram-sha-256\nhost all ${PG_TEST_USER} 127.0.0.1/32 md5\nhost all all 127.0.0.1/32 trust\n`,
    );
    const usersFile = join(dir, 'users.txt');
    const users = [SCRAM_TEST_USER, PG_TEST_USER].map((u) => `"${u}" "${verifiers[u]}"\n`).join('');
    await writeFile(usersFile, users, { mode: 0o600 });
    config.auth = { hba_file: hba, users_file: usersFile };
    config.users = { [cluster.superuser]: { server_user: cluster.superuser, server_password: cluster.superuserPassword } };
  }
  const { stringify } = await import('yaml');
  const configPath = join(dir, 'postern.yaml');
  await writeFile(configPath, stringify(config), { mode: 0o600 });
  const logPath = join(dir, 'postern.log');
  const log = await open(logPath, 'w');
  const child = spawn(process.execPath, [join(root, 'dist/main.js'), '--config', configPath], {
    cwd: root,
    stdio: ['ignore', log.fd, log.fd],
    env: { ...process.env, NODE_ENV: 'production' },
  });
  await log.close();
  child.once('error', () => undefined);
  // An interrupted run (Ctrl-C, a crash) must not leave Postern behind.
  const onExit = () => child.kill('SIGKILL');
  process.once('exit', onExit);
  const exited = new Promise((resolve) =>
    child.once('exit', () => {
      process.removeListener('exit', onExit);
      resolve();
    }),
  );
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  };
  try {
    await waitListening('127.0.0.1', port, child, logPath);
  } catch (err) {
    await stop();
    throw err;
  }
  return { host: '127.0.0.1', port, configPath, logPath, child, stop };
}

async function waitListening(host, port, child, logPath) {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`Postern exited during startup\n${await tail(logPath)}`);
    }
    if (await canConnect(host, port)) return;
    if (Date.now() > deadline) throw new Error(`Postern not listening within ${READY_TIMEOUT_MS / 1000}s\n${await tail(logPath)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function canConnect(host, port) {
  return new Promise((resolve) => {
    const s = createConnection({ host, port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

export async function tail(path, bytes = 3000) {
  try {
    return `--- ${path} ---\n${(await readFile(path, 'utf8')).slice(-bytes)}`;
  } catch {
    return '';
  }
}

/** Runs a program to completion; resolves { code, signal, ms } (output goes to `logPath`). Killed after `timeoutMs`. */
export async function runLogged(file, args, { cwd, env, logPath, timeoutMs }) {
  const log = await open(logPath, 'w');
  const started = performance.now();
  try {
    return await new Promise((resolve, reject) => {
      const child = spawn(file, args, { cwd, env, stdio: ['ignore', log.fd, log.fd] });
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        child.kill('SIGKILL');
      }, timeoutMs);
      child.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        resolve({ code, signal, timedOut, ms: performance.now() - started });
      });
    });
  } finally {
    await log.close();
  }
}

/** process.env without PG* variables: a developer's own libpq settings must not steer the suites. */
export function cleanEnv(extra = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('PG')) env[k] = v;
  return { ...env, ...extra };
}
