// The pieces of issue 14 that need no server: the ClientHello reader (real
// hellos from Node's TLS client, split over records and reads, and fuzzed),
// server-name matching of tenants and certificates, and the config checks of
// tenants, certificate lists and direct TLS.

import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import tls from 'node:tls';
import fc from 'fast-check';
import { type ConfigProblem, validateConfig } from '../../src/config/load.ts';
import type { Config } from '../../src/config/schema.ts';
import { type CertSet, generateCerts, issueCert } from '../../src/dev/certs.ts';
import { tenantFor } from '../../src/routing/tenants.ts';
import { HELLO_INVALID, HELLO_NEED_MORE, MAX_HELLO, readClientHello } from '../../src/tls/client-hello.ts';
import { loadCertificates, matchesWildcard } from '../../src/tls/contexts.ts';

let dir: string;
let certs: CertSet;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'postern-tenants-unit-'));
  certs = await generateCerts(dir);
});
after(() => rmSync(dir, { recursive: true, force: true }));

/** The first bytes Node's TLS client sends with these options (its ClientHello), captured by a plain TCP server. */
function captureHello(opts: tls.ConnectionOptions): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const server = net.createServer((sock) => {
      const parts: Buffer[] = [];
      sock.on('data', (d: Buffer) => {
        parts.push(d);
        const all = Buffer.concat(parts);
        if (all.length >= 5 && all.length >= 5 + all.readUInt16BE(3)) {
          resolve(all);
          sock.destroy();
          server.close();
        }
      });
    });
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      const c = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ...opts });
      c.on('error', () => {});
    });
    server.on('error', reject);
  });
}

/** The same handshake message re-cut into records of at most `size` bytes each. */
function reRecord(hello: Buffer, size: number): Buffer {
  const msg = hello.subarray(5, 5 + hello.readUInt16BE(3));
  const out: Buffer[] = [];
  for (let at = 0; at < msg.length; at += size) {
    const frag = msg.subarray(at, Math.min(msg.length, at + size));
    const h = Buffer.from([0x16, 0x03, 0x01, 0, 0]);
    h.writeUInt16BE(frag.length, 3);
    out.push(h, frag);
  }
  return Buffer.concat(out);
}

describe('readClientHello', () => {
  let withAll: Buffer;
  let bare: Buffer;

  before(async () => {
    [withAll, bare] = await Promise.all([
      captureHello({ servername: 'Tenant-A.test', ALPNProtocols: ['postgresql', 'h2'] }),
      captureHello({}),
    ]);
  });

  it('reads the server name (lower-cased) and the ALPN list of a real hello', () => {
    const h = readClientHello(withAll);
    assert.ok(typeof h === 'object', String(h));
    assert.equal(h.serverName, 'tenant-a.test');
    assert.deepEqual(h.alpn, ['postgresql', 'h2']);
    assert.equal(h.length, withAll.length);
  });

  it('a hello without SNI (an IP address) and without ALPN has neither', () => {
    const h = readClientHello(bare);
    assert.ok(typeof h === 'object', String(h));
    assert.equal(h.serverName, null);
    assert.equal(h.alpn, null);
  });

  it('every strict prefix needs more; bytes after the hello are not part of it', () => {
    for (let n = 0; n < withAll.length; n++) assert.equal(readClientHello(withAll.subarray(0, n)), HELLO_NEED_MORE, `prefix ${n}`);
    const h = readClientHello(Buffer.concat([withAll, Buffer.from([0x14, 0x03, 0x03, 0x00, 0x01, 0x01])]));
    assert.ok(typeof h === 'object');
    assert.equal(h.length, withAll.length);
  });

  it('a hello split over several records (down to 1 byte each) reads the same', () => {
    for (const size of [1, 2, 3, 7, 100, 511]) {
      const cut = reRecord(withAll, size);
      const h = readClientHello(cut);
      assert.ok(typeof h === 'object', `size ${size}: ${String(h)}`);
      assert.equal(h.serverName, 'tenant-a.test');
      assert.deepEqual(h.alpn, ['postgresql', 'h2']);
      assert.equal(h.length, cut.length);
      assert.equal(readClientHello(cut.subarray(0, cut.length - 1)), HELLO_NEED_MORE);
    }
  });

  it('not a hello: another record type, another handshake type, a zero or oversize record', () => {
    const other = Buffer.from(withAll);
    other[0] = 0x17;
    assert.equal(readClientHello(other), HELLO_INVALID);
    const serverHello = Buffer.from(withAll);
    serverHello[5] = 0x02;
    assert.equal(readClientHello(serverHello), HELLO_INVALID);
    assert.equal(readClientHello(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x00])), HELLO_INVALID);
    assert.equal(readClientHello(Buffer.from([0x16, 0x03, 0x01, 0x40, 0x01])), HELLO_INVALID);
    // A handshake length past MAX_HELLO.
    const huge = Buffer.from(withAll);
    huge.writeUIntBE(MAX_HELLO, 6, 3);
    assert.equal(readClientHello(huge), HELLO_INVALID);
  });

  it('fuzz: random bytes and mutated real hellos never throw and never read a name that is not there', () => {
    const check = (buf: Buffer) => {
      const r = readClientHello(buf);
      if (typeof r === 'object') {
        assert.ok(r.length <= buf.length);
        if (r.serverName !== null) assert.ok(r.serverName.length > 0 && r.serverName.length <= 255);
      } else assert.ok(r === HELLO_NEED_MORE || r === HELLO_INVALID);
    };
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 600 }), (bytes) => check(Buffer.from(bytes))),
      { numRuns: 5000 },
    );
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat(withAll.length - 1), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 8 }),
        fc.nat(withAll.length),
        (edits, cut) => {
          const b = Buffer.from(withAll);
          for (const [at, v] of edits) b[at] = v;
          check(b.subarray(0, cut));
          check(b);
          check(reRecord(b, 1 + (cut % 300)));
        },
      ),
      { numRuns: 5000 },
    );
  });
});

describe('server-name matching', () => {
  it('a wildcard covers exactly one label', () => {
    assert.equal(matchesWildcard('a.example.com', '.example.com'), true);
    assert.equal(matchesWildcard('example.com', '.example.com'), false);
    assert.equal(matchesWildcard('a.b.example.com', '.example.com'), false);
    assert.equal(matchesWildcard('.example.com', '.example.com'), false);
    assert.equal(matchesWildcard('aexample.com', '.example.com'), false);
  });

  it('tenants: an exact name wins over wildcards, the longest wildcard over shorter ones, case-insensitive', () => {
    const r = validateConfig(
      {
        tls: { cert: certs.server.cert, key: certs.server.key },
        tenants: {
          exact: { server_names: ['db.corp.test'], databases: { app: {} } },
          deep: { server_names: ['*.corp.test'], databases: { app: {} } },
          deeper: { server_names: ['*.eu.corp.test'], databases: { app: {} } },
        },
      },
      dir,
    );
    assert.ok(r.ok, JSON.stringify(r));
    const name = (sni: string | null) => tenantFor(r.config, sni)?.name ?? null;
    assert.equal(name('DB.corp.test'), 'exact');
    assert.equal(name('x.corp.test'), 'deep');
    assert.equal(name('x.eu.corp.test'), 'deeper');
    assert.equal(name('db.eu.corp.test'), 'deeper');
    assert.equal(name('a.x.corp.test'), null);
    assert.equal(name('corp.test'), null);
    assert.equal(name(null), null);
    assert.equal(name(''), null);
  });

  it('certificates: exact, then wildcard, then the default; tenant certificates default to the tenant names', async () => {
    const [one, star, t] = await Promise.all([
      issueCert(certs.ca, join(dir, 'one'), { cn: 'one.test', sans: ['one.test'], usage: 'server' }),
      issueCert(certs.ca, join(dir, 'star'), { cn: '*.zone.test', sans: ['*.zone.test'], usage: 'server' }),
      issueCert(certs.ca, join(dir, 't'), { cn: 't.test', sans: ['t.test'], usage: 'server' }),
    ]);
    const r = validateConfig(
      {
        tls: {
          cert: certs.server.cert,
          key: certs.server.key,
          certificates: [
            { server_names: ['one.test', 'a.zone.test'], cert: one.cert, key: one.key },
            { server_names: ['*.zone.test'], cert: star.cert, key: star.key },
          ],
        },
        databases: { app: {} },
        tenants: { t: { server_names: ['t.test'], certificates: [{ cert: t.cert, key: t.key }], databases: { app: {} } } },
      },
      dir,
    );
    assert.ok(r.ok, JSON.stringify(r));
    const table = loadCertificates(r.config as Config);
    const leafOf = (sni: string | null) => table.pick(sni)?.leaf;
    const der = (file: string) => new X509Certificate(readFileSync(file)).raw;
    assert.deepEqual(leafOf('one.test'), der(one.cert));
    assert.deepEqual(leafOf('a.zone.test'), der(one.cert));
    assert.deepEqual(leafOf('b.zone.test'), der(star.cert));
    assert.deepEqual(leafOf('T.TEST'), der(t.cert));
    assert.deepEqual(leafOf('x.b.zone.test'), der(certs.server.cert));
    assert.deepEqual(leafOf(null), der(certs.server.cert));
  });

  it('a key that does not match its certificate, or a file that is not PEM, is refused with the setting named', async () => {
    const other = await issueCert(certs.ca, join(dir, 'other'), { cn: 'other.test', usage: 'server' });
    const r = validateConfig(
      {
        tls: {
          cert: certs.server.cert,
          key: certs.server.key,
          certificates: [{ server_names: ['x.test'], cert: other.cert, key: certs.server.key }],
        },
        databases: { app: {} },
      },
      dir,
    );
    assert.ok(r.ok, JSON.stringify(r));
    assert.throws(
      () => loadCertificates(r.config),
      (e: Error & { problems?: Array<{ path: string; message: string }> }) =>
        (e.problems?.some((p) => p.path.startsWith('tls.certificates')) ?? false) && !e.message.includes('PRIVATE KEY'),
    );
  });
});

describe('config checks', () => {
  const problems = (raw: unknown): ConfigProblem[] => {
    const r = validateConfig(raw, dir);
    assert.equal(r.ok, false, 'expected problems');
    return r.ok ? [] : r.problems;
  };
  const tlsOk = () => ({ cert: certs.server.cert, key: certs.server.key });

  it('with tenants the top-level databases may be empty', () => {
    const r = validateConfig({ tls: tlsOk(), tenants: { t: { server_names: ['t.test'], databases: { app: {} } } } }, dir);
    assert.ok(r.ok, JSON.stringify(r));
    assert.deepEqual(r.config.databases, {});
    assert.equal(r.config.tenants.t?.databases.app?.port, 5432, 'tenant databases get the database defaults');
  });

  it('refuses a name in two tenants, a passthrough tenant with databases, a terminated tenant without a certificate, TLS disabled', () => {
    const twice = problems({
      tls: tlsOk(),
      tenants: { x: { server_names: ['same.test'], databases: { a: {} } }, y: { server_names: ['SAME.test'], databases: { a: {} } } },
    });
    assert.ok(
      twice.some((p) => /also a server name of tenant/.test(p.message)),
      JSON.stringify(twice),
    );
    const both = problems({
      tls: tlsOk(),
      tenants: { p: { server_names: ['p.test'], passthrough: { host: 'db' }, databases: { a: {} } } },
    });
    assert.ok(
      both.some((p) => p.path === 'tenants.p.databases'),
      JSON.stringify(both),
    );
    const noCert = problems({ tenants: { t: { server_names: ['t.test'], databases: { a: {} } } } });
    assert.ok(
      noCert.some((p) => /needs a certificate/.test(p.message)),
      JSON.stringify(noCert),
    );
    const off = problems({ tls: { ...tlsOk(), mode: 'disable' }, tenants: { t: { server_names: ['t.test'], databases: { a: {} } } } });
    assert.ok(
      off.some((p) => p.path === 'tls.mode'),
      JSON.stringify(off),
    );
    const noNames = problems({ tls: tlsOk(), tenants: { t: { databases: { a: {} } } } });
    assert.ok(
      noNames.some((p) => p.path === 'tenants.t.server_names'),
      JSON.stringify(noNames),
    );
    const badName = problems({ tls: tlsOk(), tenants: { 'a/b': { server_names: ['t.test'], databases: { a: {} } } } });
    assert.ok(
      badName.some((p) => p.path === 'tenants.a/b'),
      JSON.stringify(badName),
    );
    const badWild = problems({ tls: tlsOk(), tenants: { t: { server_names: ['a.*.test'], databases: { a: {} } } } });
    assert.ok(badWild.length > 0);
  });

  it('a passthrough-only deployment needs no certificate of its own', () => {
    const r = validateConfig(
      { databases: { app: {} }, tenants: { p: { server_names: ['p.test'], passthrough: { host: 'db', port: 6000 } } } },
      dir,
    );
    assert.ok(r.ok, JSON.stringify(r));
    assert.deepEqual(r.config.tenants.p?.passthrough, { host: 'db', port: 6000, direct: false });
  });

  it('databases.*.tls.direct needs TLS required', () => {
    const ps = problems({ databases: { app: { tls: { mode: 'prefer', direct: true } } } });
    assert.ok(
      ps.some((p) => p.path.startsWith('databases.app.tls')),
      JSON.stringify(ps),
    );
    const inTenant = problems({
      tls: tlsOk(),
      tenants: { t: { server_names: ['t.test'], databases: { a: { tls: { mode: 'allow', direct: true } } } } },
    });
    assert.ok(
      inTenant.some((p) => p.path.startsWith('tenants.t.databases.a.tls')),
      JSON.stringify(inTenant),
    );
    const ok = validateConfig({ databases: { app: { tls: { mode: 'require', direct: true } } } }, dir);
    assert.ok(ok.ok, JSON.stringify(ok));
  });
});
