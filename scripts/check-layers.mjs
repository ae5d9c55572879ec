// Enforces the dependency direction of DESIGN.md: src/protocol is a pure codec
// and imports nothing from the rest of the project (and no sockets, timers or
// logging). Exits non-zero listing every offending import.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const problems = [];
const dir = 'src/protocol';
for (const f of readdirSync(dir)) {
  if (!f.endsWith('.ts')) continue;
  const text = readFileSync(join(dir, f), 'utf8');
  for (const m of text.matchAll(/^\s*import[^'"]*['"]([^'"]+)['"]/gm)) {
    const spec = m[1];
    const ok = (spec.startsWith('./') && !spec.includes('/', 2)) || spec === 'node:buffer';
    if (!ok) problems.push(`${dir}/${f}: imports ${spec} (protocol/ must stay pure)`);
  }
}
if (problems.length > 0) {
  console.error(problems.join('\n'));
  process.exit(1);
}
console.log('layers: ok');
