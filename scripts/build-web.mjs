// Builds the dashboard page (src/admin/web) into dist/admin/web: one
// JavaScript bundle (esbuild, ES2022, minified; uPlot included) and one CSS
// file, plus index.html. No file is fetched at run time from anywhere but
// Postern's own admin listener. Run by `npm run build` after tsc.
import { copyFileSync, mkdirSync } from 'node:fs';
import { build } from 'esbuild';

const out = 'dist/admin/web';
mkdirSync(out, { recursive: true });
await build({
  entryPoints: { app: 'src/admin/web/main.ts' },
  bundle: true,
  minify: true,
  format: 'esm',
  target: 'es2022',
  outdir: out,
  legalComments: 'eof',
  logLevel: 'warning',
});
copyFileSync('src/admin/web/index.html', `${out}/index.html`);
