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
