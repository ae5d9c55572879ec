// Command-line flags of `node bench/run.mjs` (see bench/README.md).

import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { ALL_SCENARIOS, QUICK_SCENARIOS } from './scenarios.mjs';

export const TARGETS = ['direct', 'postern', 'pgbouncer'];

export const HELP = `Usage: node bench/run.mjs [flags]        (or: npm run bench -- [flags])

  --rounds N           interleaved rounds (default 3)
  --duration S         seconds per pgbench run (default 10)
  --clients LIST       pgbench client counts (default 1,10,50)
  --scenarios LIST     default: all of
                       ${ALL_SCENARIOS.join(',')}
  --targets LIST       direct,postern,pgbouncer (default all)
  --quick              rounds 1, duration 3, clients 10, copy-mb 256, idle 1000 and the
                       scenarios ${QUICK_SCENARIOS.join(',')}
                       (flags given explicitly still win)
  --out DIR            results directory (default bench/results)
  --copy-mb N          size of the copy-stream COPY in MiB (default 1024)
  --idle N             idle-clients session count (default 10000)
  --idle-postern N     cap for Postern in idle-clients (default: none; an idle Postern
                       client holds no server connection, as in PgBouncer)
  --scale N            pgbench scale factor (default 10)
  --jobs N             pgbench threads, -j (default 1; capped at the client count)
  --pause S            pause between runs in seconds (default 1)
  --slow-mbps N        read rate of the slow client in copy-stream-slow, MiB/s (default 64)
  --variant NAME:K=V[;K=V...]
                       also run a second Postern with these config overrides (keys as in the
                       config file, values in YAML), interleaved with the first, e.g.
                       --variant nostats:stats.queries=false  or  --variant w2:workers=2;
                       the report adds an A/B table (variant / postern, same rounds)
  --baseline DIR       the variant is another checkout of Postern (built: DIR/dist/main.js)
                       with the same config, e.g. main before a change; the A/B table then
                       reads baseline / this checkout
  --help`;

function list(v) {
  return v
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}

function positiveInt(name, v) {
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`--${name} must be a positive integer, got ${JSON.stringify(v)}`);
  return n;
}

/** "name:key=value;key=value" -> { name, overrides: [[key, rawValue]] } (values parsed as YAML by the caller). */
function parseVariant(v) {
  const i = v.indexOf(':');
  const name = i < 0 ? '' : v.slice(0, i);
  if (!/^[a-z0-9][a-z0-9_-]*$/i.test(name))
    throw new Error(`--variant must start with a name and a colon (e.g. nostats:stats.queries=false), got ${JSON.stringify(v)}`);
  const overrides = v
    .slice(i + 1)
    .split(';')
    .filter((x) => x.trim() !== '')
    .map((kv) => {
      const eq = kv.indexOf('=');
      if (eq <= 0) throw new Error(`--variant: "${kv}" is not key=value`);
      return [kv.slice(0, eq).trim(), kv.slice(eq + 1).trim()];
    });
  if (overrides.length === 0) throw new Error('--variant needs at least one key=value');
  return { name, overrides };
}

export function parseOptions(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      rounds: { type: 'string' },
      duration: { type: 'string' },
      clients: { type: 'string' },
      scenarios: { type: 'string' },
      targets: { type: 'string' },
      quick: { type: 'boolean', default: false },
      out: { type: 'string' },
      'copy-mb': { type: 'string' },
      idle: { type: 'string' },
      'idle-postern': { type: 'string' },
      scale: { type: 'string' },
      jobs: { type: 'string' },
      pause: { type: 'string' },
      variant: { type: 'string' },
      baseline: { type: 'string' },
      'slow-mbps': { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) return { help: true };
  const q = values.quick;
  const opts = {
    quick: q,
    rounds: positiveInt('rounds', values.rounds ?? (q ? 1 : 3)),
    duration: positiveInt('duration', values.duration ?? (q ? 3 : 10)),
    clients: list(values.clients ?? (q ? '10' : '1,10,50')).map((c) => positiveInt('clients', c)),
    scenarios: list(values.scenarios ?? (q ? QUICK_SCENARIOS : ALL_SCENARIOS).join(',')),
    targets: list(values.targets ?? TARGETS.join(',')),
    out: values.out ?? 'bench/results',
    copyMb: positiveInt('copy-mb', values['copy-mb'] ?? (q ? 256 : 1024)),
    idle: positiveInt('idle', values.idle ?? (q ? 1000 : 10000)),
    idlePostern: values['idle-postern'] === undefined ? Number.POSITIVE_INFINITY : positiveInt('idle-postern', values['idle-postern']),
    scale: positiveInt('scale', values.scale ?? 10),
    jobs: positiveInt('jobs', values.jobs ?? 1),
    pause: Number(values.pause ?? 1),
    variant:
      values.baseline !== undefined
        ? { name: 'baseline', overrides: [], root: resolve(values.baseline) }
        : values.variant === undefined
          ? undefined
          : parseVariant(values.variant),
    slowMbps: positiveInt('slow-mbps', values['slow-mbps'] ?? 64),
  };
  for (const s of opts.scenarios)
    if (!ALL_SCENARIOS.includes(s)) throw new Error(`unknown scenario "${s}"; known: ${ALL_SCENARIOS.join(', ')}`);
  for (const t of opts.targets) if (!TARGETS.includes(t)) throw new Error(`unknown target "${t}"; known: ${TARGETS.join(', ')}`);
  if (!Number.isFinite(opts.pause) || opts.pause < 0) throw new Error('--pause must be a number >= 0');
  if (values.baseline !== undefined && values.variant !== undefined) throw new Error('--baseline and --variant cannot be combined');
  if (opts.variant?.root !== undefined && !existsSync(join(opts.variant.root, 'dist', 'main.js')))
    throw new Error(`--baseline ${opts.variant.root}: no dist/main.js there (build that checkout first)`);
  return opts;
}
