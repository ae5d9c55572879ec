// tls.watch: the TLS files are polled (fs.watchFile: a stat every second,
// which also sees a file replaced by a rename or a symlink swap, as
// Kubernetes does with mounted secrets) and, a moment after the last change,
// reloaded as SIGHUP would. A cert and its key written one after the other
// settle before the reload; a half-written pair is refused and retried at
// the next change.

import { unwatchFile, watchFile } from 'node:fs';
import type { Config } from '../config/schema.ts';

const POLL_MS = 1000;
const SETTLE_MS = 300;

/** Every TLS file a config names: client side, server side, admin. */
export function tlsFiles(config: Config): string[] {
  const out = new Set<string>();
  const add = (p: string | undefined): void => {
    if (p !== undefined) out.add(p);
  };
  const t = config.tls;
  add(t.cert);
  add(t.key);
  add(t.ca);
  for (const e of t.certificates) {
    add(e.cert);
    add(e.key);
  }
  const dbs = [...Object.values(config.databases)];
  for (const tenant of Object.values(config.tenants)) {
    for (const e of tenant.certificates) {
      add(e.cert);
      add(e.key);
    }
    dbs.push(...Object.values(tenant.databases));
  }
  for (const db of dbs) {
    add(db.tls.ca);
    add(db.tls.cert);
    add(db.tls.key);
  }
  add(config.admin.tls.cert);
  add(config.admin.tls.key);
  return [...out];
}

export class TlsWatcher {
  readonly #files: string[];
  readonly #onChange: () => void;
  #timer: NodeJS.Timeout | null = null;

  constructor(files: string[], onChange: () => void) {
    this.#files = files;
    this.#onChange = onChange;
    for (const f of files) watchFile(f, { interval: POLL_MS, persistent: false }, this.#changed);
  }

  #changed = (cur: { mtimeMs: number; ino: number; size: number }, prev: { mtimeMs: number; ino: number; size: number }): void => {
    if (cur.mtimeMs === prev.mtimeMs && cur.ino === prev.ino && cur.size === prev.size) return;
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#onChange();
    }, SETTLE_MS);
    this.#timer.unref();
  };

  stop(): void {
    for (const f of this.#files) unwatchFile(f, this.#changed);
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
  }
}
