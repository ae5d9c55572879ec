// Docs are part of the feature: the generated configuration reference must
// match the settings table, and every example config must validate.

import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { parse } from 'yaml';
import { renderConfigDocs } from '../../src/config/docs.ts';
import { validateConfig } from '../../src/config/load.ts';

test('docs/configuration.md is generated from the current settings table (run `npm run docs`)', () => {
  assert.equal(readFileSync('docs/configuration.md', 'utf8'), renderConfigDocs());
});

test('every example config validates (certificate files aside)', () => {
  const files = readdirSync('examples').filter((f) => f.endsWith('.yaml'));
  assert.ok(files.length >= 2);
  for (const f of files) {
    const r = validateConfig(parse(readFileSync(join('examples', f), 'utf8')), 'examples');
    const problems = r.ok ? [] : r.problems.filter((p) => !p.message.includes('is not readable'));
    assert.deepEqual(problems, [], f);
  }
});

test('docs/observability.md lists every metric, every SHOW command and every column of SHOW output', async () => {
  const { METRICS } = await import('../../src/metrics/registry.ts');
  const { SHOW_NAMES, showColumns } = await import('../../src/admin/executor.ts');
  const doc = readFileSync('docs/observability.md', 'utf8');
  for (const m of METRICS) assert.ok(doc.includes(`\`${m.name}\``), `metric ${m.name} is not documented`);
  for (const name of SHOW_NAMES) {
    assert.ok(doc.includes(`SHOW ${name.toUpperCase()}`), `SHOW ${name.toUpperCase()} is not documented`);
    for (const c of showColumns(name) ?? []) {
      if (['name', 'value', 'key', 'version', 'list', 'items', 'default', 'changeable', 'type'].includes(c.name)) continue;
      assert.ok(doc.includes(c.name), `column ${c.name} of SHOW ${name.toUpperCase()} is not documented`);
    }
  }
});
