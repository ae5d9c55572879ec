// The package version, read once from package.json so there is one source.

import { readFileSync } from 'node:fs';

export const VERSION: string = (() => {
  // dist/version.js and build/src/version.js sit one and two levels below the root.
  for (const rel of ['../package.json', '../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as { name?: string; version: string };
      if (pkg.name === 'postern') return pkg.version;
    } catch {
      // try the next candidate
    }
  }
  return '0.0.0';
})();
