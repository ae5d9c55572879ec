// Tenants: which part of the config serves a client, chosen by the TLS
// server name (SNI) it sent. An exact name of any tenant wins over every
// wildcard, a longer wildcard over a shorter one; a client with no name, or
// one no tenant lists, is served from the top-level databases. The handshake
// asks this before anything is decrypted (a passthrough tenant's bytes are
// never opened), the login and the router use the answer's scope.

import type { Config, TenantConfig } from '../config/schema.ts';
import { matchesWildcard } from '../tls/contexts.ts';

export interface TenantMatch {
  readonly name: string;
  readonly tenant: TenantConfig;
}

const tables = new WeakMap<Config['tenants'], TenantTable>();

/** The tenants of a config by server name (built once per config's tenants map). */
export function tenantFor(config: Config, servername: string | null | undefined): TenantMatch | null {
  if (servername === null || servername === undefined || servername === '') return null;
  let t = tables.get(config.tenants);
  if (t === undefined) {
    t = new TenantTable(config.tenants);
    tables.set(config.tenants, t);
  }
  return t.match(servername);
}

/** Any tenant is passed through: the handshake must read ClientHellos before choosing how to answer them. */
export function anyPassthrough(config: Config): boolean {
  for (const t of Object.values(config.tenants)) if (t.passthrough.host !== undefined) return true;
  return false;
}

class TenantTable {
  readonly #exact = new Map<string, TenantMatch>();
  /** By suffix with its dot, longest first. */
  readonly #wild: Array<[string, TenantMatch]> = [];

  constructor(tenants: Config['tenants']) {
    for (const [name, tenant] of Object.entries(tenants))
      for (const n of tenant.server_names ?? []) {
        const m = { name, tenant };
        if (n.startsWith('*.')) this.#wild.push([n.slice(1), m]);
        else this.#exact.set(n, m);
      }
    this.#wild.sort((a, b) => b[0].length - a[0].length);
  }

  match(servername: string): TenantMatch | null {
    const name = servername.toLowerCase();
    const exact = this.#exact.get(name);
    if (exact !== undefined) return exact;
    for (const [suffix, m] of this.#wild) if (matchesWildcard(name, suffix)) return m;
    return null;
  }
}
