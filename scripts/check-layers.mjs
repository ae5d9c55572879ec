// Enforces the dependency direction of docs/architecture.md:
//
//   errors.ts  <-  protocol  <-  auth  <-  backend  <-  routing  <-  frontend  <-  server.ts  <-  main.ts
//                   (pure)                  (context.ts sits between backend and the rooms that use it)
//
// - src/errors.ts imports nothing; src/protocol imports only itself and
//   errors.ts (and no sockets, timers or logging).
// - Each folder may not import the folders above it (table below).
// - The frontend rooms never import the session shell (frontend/session.ts).
// - Nothing below the composition root imports the admin console, the
//   metrics or the cluster code (they read state through snapshots).
// Exits non-zero listing every offending import.

import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';

const SRC = 'src';
/** Folder (or file) under src -> what it must not import (folders or files under src). */
const FORBIDDEN = {
  'errors.ts': ['*'],
  protocol: ['*'],
  sql: ['auth', 'backend', 'routing', 'frontend', 'admin', 'metrics', 'cluster', 'context.ts', 'server.ts', 'main.ts'],
  stats: ['auth', 'backend', 'routing', 'frontend', 'admin', 'metrics', 'cluster', 'context.ts', 'server.ts', 'main.ts'],
  config: ['auth', 'backend', 'routing', 'frontend', 'admin', 'metrics', 'cluster', 'context.ts', 'server.ts', 'main.ts'],
  auth: ['backend', 'routing', 'frontend', 'admin', 'metrics', 'cluster', 'context.ts', 'server.ts', 'main.ts'],
  tls: ['backend', 'routing', 'frontend', 'admin', 'metrics', 'cluster', 'context.ts', 'server.ts', 'main.ts'],
  backend: ['routing', 'frontend', 'admin', 'metrics', 'cluster', 'context.ts', 'server.ts', 'main.ts'],
  'context.ts': ['routing', 'frontend', 'admin', 'metrics', 'cluster', 'server.ts', 'main.ts'],
  routing: ['frontend', 'admin', 'metrics', 'cluster', 'server.ts', 'main.ts'],
  frontend: ['admin', 'metrics', 'cluster', 'server.ts', 'main.ts'],
  admin: ['frontend', 'cluster', 'server.ts', 'main.ts'],
  metrics: ['frontend', 'cluster', 'server.ts', 'main.ts'],
  observability: ['backend', 'routing', 'frontend', 'admin', 'metrics', 'cluster', 'context.ts', 'server.ts', 'main.ts'],
};
/** protocol/ may import itself and this one shared leaf. */
const PROTOCOL_ALLOWED = ['protocol', 'errors.ts'];

function walk(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...walk(p));
    else if (name.endsWith('.ts')) out.push(p);
  }
  return out;
}

/** The room of a path under src: its first folder, or the file itself at the top. */
function roomOf(rel) {
  const parts = rel.split('/');
  return parts.length === 1 ? parts[0] : parts[0];
}

const problems = [];
for (const file of walk(SRC)) {
  const rel = relative(SRC, file);
  const room = roomOf(rel);
  const rules = FORBIDDEN[room];
  const text = readFileSync(file, 'utf8');
  for (const m of text.matchAll(/^\s*(?:import|export)[^'"]*?from\s*['"]([^'"]+)['"]/gm)) {
    const spec = m[1];
    if (!spec.startsWith('.')) {
      if (room === 'protocol' && spec !== 'node:buffer') problems.push(`${file}: imports ${spec} (protocol/ must stay pure)`);
      if (room === 'errors.ts') problems.push(`${file}: imports ${spec} (errors.ts imports nothing)`);
      continue;
    }
    const target = normalize(join(dirname(rel), spec));
    const targetRoom = roomOf(target);
    if (targetRoom === room) {
      // The shell is not imported by the rooms it runs.
      if (room === 'frontend' && target === 'frontend/session.ts' && rel !== 'frontend/session.ts')
        problems.push(`${file}: imports the session shell (${spec}); rooms report through their host interfaces`);
      continue;
    }
    if (room === 'protocol') {
      if (!PROTOCOL_ALLOWED.includes(targetRoom)) problems.push(`${file}: imports ${spec} (protocol/ must stay pure)`);
      continue;
    }
    if (rules === undefined) continue;
    if (rules.includes('*') || rules.includes(targetRoom))
      problems.push(`${file}: imports ${spec} (${room} must not depend on ${targetRoom})`);
  }
}
if (problems.length > 0) {
  console.error(problems.join('\n'));
  process.exit(1);
}
console.log('layers: ok');
