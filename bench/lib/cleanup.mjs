// One place that knows everything the harness started: child processes,
// temp dirs, the cluster. Cleanup runs on normal exit, on errors and on
// SIGINT/SIGTERM/SIGHUP, in reverse order of registration, each step at most once.

import { rmSync } from 'node:fs';
import { rm } from 'node:fs/promises';

const steps = [];
const children = new Set();
const dirs = new Set();
let running;

/** True once cleanup has begun (a signal, an error or the normal end). */
export function stopping() {
  return running !== undefined;
}

/** Registers an async cleanup step; returns a function that runs it early (once). */
export function onCleanup(name, fn) {
  const step = { name, fn, done: false, promise: undefined };
  steps.push(step);
  return () => runStep(step);
}

function runStep(step) {
  if (!step.promise) {
    step.promise = (async () => {
      try {
        await step.fn();
      } catch (err) {
        process.stderr.write(`bench: cleanup ${step.name} failed: ${err?.message ?? err}\n`);
      } finally {
        step.done = true;
      }
    })();
  }
  return step.promise;
}

/** Tracks a spawned child so it is killed if still running at cleanup. */
export function trackChild(child) {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

export function trackDir(dir) {
  dirs.add(dir);
  return dir;
}

function exited(child) {
  return child.exitCode !== null || child.signalCode !== null;
}

/** SIGTERM, then SIGKILL after `graceMs`. Resolves when the child has exited. */
export function stopChild(child, graceMs = 5000) {
  if (!child || exited(child)) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      try {
        child.kill('SIGKILL');
      } catch {
        // Already gone.
      }
    }, graceMs);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    try {
      child.kill('SIGTERM');
    } catch {
      clearTimeout(timer);
      resolve();
    }
  });
}

export function cleanupAll() {
  running ??= (async () => {
    for (const step of [...steps].reverse()) await runStep(step);
    await Promise.all([...children].map((c) => stopChild(c, 3000)));
    for (const d of dirs) await rm(d, { recursive: true, force: true }).catch(() => undefined);
    dirs.clear();
  })();
  return running;
}

let installed = false;

/** SIGINT/SIGTERM/SIGHUP: clean up, then exit 130/143/129. A second signal exits at once. */
export function installSignalHandlers() {
  if (installed) return;
  installed = true;
  let caught = false;
  const codes = { SIGINT: 130, SIGTERM: 143, SIGHUP: 129 };
  for (const sig of Object.keys(codes)) {
    process.on(sig, () => {
      if (caught) {
        lastResort();
        process.exit(codes[sig]);
      }
      caught = true;
      process.stderr.write(`\nbench: ${sig}: stopping everything and cleaning up...\n`);
      const force = setTimeout(() => {
        lastResort();
        process.exit(codes[sig]);
      }, 60_000);
      force.unref();
      cleanupAll().finally(() => process.exit(codes[sig]));
    });
  }
  // Synchronous last resort for paths that skip the async cleanup (process.exit elsewhere).
  process.on('exit', lastResort);
}

function lastResort() {
  for (const c of children) {
    try {
      if (!exited(c)) c.kill('SIGKILL');
    } catch {
      // Gone.
    }
  }
  for (const d of dirs) {
    try {
      rmSync(d, { recursive: true, force: true });
    } catch {
      // Best effort.
    }
  }
}
