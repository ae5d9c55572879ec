// Test helpers: an in-process Postern on port 0 with captured JSON logs, and
// runners for the real client binaries (psql, pgbench). Everything started
// here is stopped by the caller's `after` hook or the returned close().

import { type ChildProcessWithoutNullStreams, execFile, spawn } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import tls from 'node:tls';
import { validateConfig } from '../../src/config/load.ts';
import type { Config } from '../../src/config/schema.ts';
import { createLogger } from '../../src/observability/log.ts';
import { SSL_REQUEST } from '../../src/protocol/startup.ts';
import { Postern } from '../../src/server.ts';

export interface RunningPostern {
  postern: Postern;
  port: number;
  config: Config;
  /** Every log line written so far (JSON strings). */
  logs: string[];
  close(): Promise<void>;
}

/** Starts Postern in-process from a raw (YAML-shaped) config object; listen.port defaults to 0. */
export async function startPostern(raw: Record<string, unknown>, baseDir = process.cwd()): Promise<RunningPostern> {
  const listen = { host: '127.0.0.1', port: 0, ...((raw.listen as object | undefined) ?? {}) };
  const result = validateConfig({ ...raw, listen, log: { level: 'debug', ...((raw.log as object | undefined) ?? {}) } }, baseDir);
  if (!result.ok) throw new Error(`bad test config: ${JSON.stringify(result.problems)}`);
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) if (line !== '') logs.push(line);
      cb();
    },
  });
  const postern = new Postern(result.config, { logger: createLogger(result.config.log.level, sink) });
  const addr = await postern.listen();
  return { postern, port: addr.port, config: result.config, logs, close: () => postern.close() };
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion (never throws on a non-zero exit). */
export function run(
  cmd: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; input?: string | Buffer; timeoutMs?: number } = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: opts.env ?? process.env, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({
        code: code ?? (signal ? 128 : 1),
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
      });
    });
    child.stdin.on('error', () => {});
    if (opts.input !== undefined) child.stdin.end(opts.input);
    else child.stdin.end();
  });
}

/** A clean environment for libpq tools: no inherited PG* variables, no ~/.pgpass. */
export function pgEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('PG')) env[k] = v;
  env.PGPASSFILE = '/nonexistent/pgpass';
  env.PGCONNECT_TIMEOUT = '20';
  return { ...env, ...extra };
}

/** psql -X -A -t with a conninfo string; password via PGPASSWORD. */
export function psql(
  conninfo: string,
  sqlOrArgs: string | string[],
  opts: { password?: string; input?: string; env?: Record<string, string> } = {},
): Promise<RunResult> {
  const args = ['-X', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-d', conninfo];
  if (typeof sqlOrArgs === 'string') args.push('-c', sqlOrArgs);
  else args.push(...sqlOrArgs);
  const env = pgEnv({ ...(opts.password !== undefined ? { PGPASSWORD: opts.password } : {}), ...(opts.env ?? {}) });
  return run('psql', args, opts.input !== undefined ? { env, input: opts.input } : { env });
}

export function execText(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, (err, stdout) => (err ? reject(err) : resolve(stdout)));
  });
}

/** Polls `fn` until it returns a truthy value or the timeout passes. */
export async function waitUntil<T>(fn: () => T | Promise<T>, timeoutMs = 10_000, what = 'condition'): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Log lines (parsed) whose msg matches. */
export function logsWith(logs: string[], msg: string | RegExp): Array<Record<string, unknown>> {
  return logs
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((o) => (typeof msg === 'string' ? o.msg === msg : msg.test(String(o.msg))));
}

/** The built CLI (`npm test` builds dist/ first). */
export const MAIN = join(process.cwd(), 'dist', 'main.js');

/** Starts the built CLI with `args`; `out()` is everything it printed so far (stdout and stderr). */
export function startCli(args: string[]): { child: ChildProcessWithoutNullStreams; out: () => string; exited: Promise<number | null> } {
  const child = spawn(process.execPath, [MAIN, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
  });
  child.stderr.on('data', (d: Buffer) => {
    out += d.toString();
  });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, out: () => out, exited };
}

/** SSLRequest on a Postern client port, then a TLS handshake (with `servername` as SNI when given): the certificate presented. */
export function presentedCert(port: number, servername?: string): Promise<X509Certificate> {
  return new Promise((resolve, reject) => {
    const raw = net.connect({ host: '127.0.0.1', port });
    raw.once('connect', () => raw.write(SSL_REQUEST));
    raw.once('error', reject);
    raw.once('data', (d: Buffer) => {
      if (d.toString() !== 'S') {
        reject(new Error(`SSL response ${JSON.stringify(d.toString())}`));
        return;
      }
      const opts: tls.ConnectionOptions = { socket: raw, rejectUnauthorized: false };
      if (servername !== undefined) opts.servername = servername;
      const s = tls.connect(opts);
      s.once('secureConnect', () => {
        const peer = s.getPeerX509Certificate();
        s.destroy();
        if (peer === undefined) reject(new Error('no peer certificate'));
        else resolve(peer);
      });
      s.once('error', reject);
    });
  });
}

/** SHA-256 fingerprint of a PEM certificate file, as X509Certificate.fingerprint256 gives it. */
export const fingerprint = (file: string): string => new X509Certificate(readFileSync(file)).fingerprint256;
