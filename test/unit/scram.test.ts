// SCRAM-SHA-256 (src/auth/scram.ts), SASLprep (src/auth/saslprep.ts) and the
// `postern passwd` helpers (src/auth/passwd.ts):
//   - RFC 7677's test vector on both sides, with injected nonces;
//   - ScramServer <-> ScramClient round trips (channel binding, downgrade,
//     wrong password, unknown user, passthrough keys, key cache) and the
//     message checks of each side;
//   - SASLprep cases, and tls-server-end-point on openssl-made certificates;
//   - against a real PostgreSQL (one cluster, TLS): the server accepts our
//     verifiers, ours parse its verifiers and reproduce its SASLprep, and
//     ScramClient logs in over a raw socket with and without channel binding
//     and with passthrough keys.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, createHmac, pbkdf2Sync, randomBytes, X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import tls from 'node:tls';
import { formatUsersFileLine, type PasswordInput, readPasswordNoEcho } from '../../src/auth/passwd.ts';
import { saslprep, saslprepBytes, saslprepStrict } from '../../src/auth/saslprep.ts';
import {
  certificateSignatureOid,
  deriveKeys,
  formatVerifier,
  makeVerifier,
  mockVerifier,
  parseVerifier,
  SCRAM_ERROR,
  SCRAM_SHA_256,
  SCRAM_SHA_256_PLUS,
  ScramClient,
  type ScramClientOptions,
  ScramError,
  type ScramKeys,
  ScramServer,
  type ScramServerOptions,
  type ScramVerifier,
  tlsServerEndPoint,
} from '../../src/auth/scram.ts';
import { type CertSet, generateCerts } from '../../src/dev/certs.ts';
import { type PgCluster, startPostgres } from '../../src/dev/cluster.ts';
import { decodeAuth, decodeNotice, decodeSaslMechanisms } from '../../src/protocol/backend.ts';
import { AUTH, PROTOCOL_3_0 } from '../../src/protocol/codes.ts';
import { encodeSaslInitial, encodeSaslResponse } from '../../src/protocol/frontend.ts';
import { encodeStartup, SSL_REQUEST } from '../../src/protocol/startup.ts';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');

// ---------------------------------------------------------------- helpers

type Outcome = { ok: true; clientKey: Buffer; mechanism: string } | { ok: false; error: ScramError };

/** One full exchange between a ScramServer and a ScramClient; client-side throws count as failures too. */
async function exchange(server: ScramServer, client: ScramClient, offered: string[] = server.mechanisms()): Promise<Outcome> {
  try {
    const mechanism = client.chooseMechanism(offered);
    const init = client.initial();
    const first = server.handleInitial(init.mechanism, init.data);
    if ('error' in first) return { ok: false, error: first.error };
    const final = server.handleFinal(await client.handleContinue(first.serverFirst));
    if ('error' in final) return { ok: false, error: final.error };
    client.handleFinal(final.serverFinal);
    assert.equal(client.done, true);
    return { ok: true, clientKey: final.clientKey, mechanism };
  } catch (err) {
    if (err instanceof ScramError) return { ok: false, error: err };
    throw err;
  }
}

function failedWith(o: Outcome, kind: string): ScramError {
  assert.equal(o.ok, false, 'exchange should have failed');
  if (o.ok) throw new Error('unreachable');
  assert.equal(o.error.kind, kind, `kind ${o.error.kind}: ${o.error.reason}`);
  return o.error;
}

/** Runs handleInitial on a hand-made client-first-message; the error kind, or 'ok'. */
function initialKind(server: ScramServer, mechanism: string, message: string | Buffer): string {
  const r = server.handleInitial(mechanism, typeof message === 'string' ? b(message) : message);
  return 'error' in r ? r.error.kind : 'ok';
}

let verifierCache: ScramVerifier | undefined;
/** A verifier for 'pencil' with few iterations: these tests are about messages, not key stretching. */
async function pencil(): Promise<ScramVerifier> {
  verifierCache ??= await makeVerifier('pencil', { iterations: 4096 });
  return verifierCache;
}

function server(verifier: ScramVerifier | null, extra: Partial<ScramServerOptions> = {}): ScramServer {
  return new ScramServer({ verifier, username: 'user', ...extra });
}

function client(opts: ScramClientOptions): ScramClient {
  return new ScramClient(opts);
}

// ---------------------------------------------------------------- RFC 7677

describe('RFC 7677 test vector', () => {
  const CLIENT_NONCE = 'rOprNGfwEbeRWgbNEkqO';
  const SERVER_NONCE = '%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0';
  const SALT = Buffer.from('W22ZaJ0SNY7soEsUEjb6gQ==', 'base64');
  const CLIENT_FIRST = `n,,n=user,r=${CLIENT_NONCE}`;
  const SERVER_FIRST = `r=${CLIENT_NONCE}${SERVER_NONCE},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096`;
  const CLIENT_FINAL = `c=biws,r=${CLIENT_NONCE}${SERVER_NONCE},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=`;
  const SERVER_FINAL = 'v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=';

  it('client side: client-first, client-final proof, server signature', async () => {
    const c = new ScramClient({ password: 'pencil', username: 'user', clientNonce: CLIENT_NONCE });
    assert.equal(c.chooseMechanism([SCRAM_SHA_256]), SCRAM_SHA_256);
    const init = c.initial();
    assert.equal(init.mechanism, SCRAM_SHA_256);
    assert.equal(init.data.toString('latin1'), CLIENT_FIRST);
    assert.equal((await c.handleContinue(b(SERVER_FIRST))).toString('latin1'), CLIENT_FINAL);
    assert.equal(c.done, false);
    c.handleFinal(b(SERVER_FINAL));
    assert.equal(c.done, true);
    assert.equal(c.warning, null);
  });

  it('client side: a server signature off by one bit is refused', async () => {
    const c = new ScramClient({ password: 'pencil', username: 'user', clientNonce: CLIENT_NONCE });
    c.chooseMechanism([SCRAM_SHA_256]);
    c.initial();
    await c.handleContinue(b(SERVER_FIRST));
    const sig = Buffer.from(SERVER_FINAL.slice(2), 'base64');
    sig[0] = (sig[0] as number) ^ 1;
    assert.throws(
      () => c.handleFinal(b(`v=${sig.toString('base64')}`)),
      (e: ScramError) => e.kind === SCRAM_ERROR.ServerSignature,
    );
    assert.equal(c.done, false);
  });

  it('server side: server-first, proof check, server-final, recovered ClientKey', async () => {
    const v = await makeVerifier('pencil', { salt: SALT, iterations: 4096 });
    const s = new ScramServer({ verifier: v, username: 'user', serverNonce: SERVER_NONCE });
    assert.deepEqual(s.mechanisms(), [SCRAM_SHA_256]);
    const first = s.handleInitial(SCRAM_SHA_256, b(CLIENT_FIRST));
    assert.ok('serverFirst' in first);
    assert.equal(first.serverFirst.toString('latin1'), SERVER_FIRST);
    const final = s.handleFinal(b(CLIENT_FINAL));
    assert.ok('serverFinal' in final, 'error' in final ? final.error.reason : '');
    assert.equal(final.serverFinal.toString('latin1'), SERVER_FINAL);
    const salted = pbkdf2Sync('pencil', SALT, 4096, 32, 'sha256');
    assert.deepEqual(final.clientKey, createHmac('sha256', salted).update('Client Key').digest());
  });

  it('server side: a proof for another password fails', async () => {
    const v = await makeVerifier('pencil', { salt: SALT, iterations: 4096 });
    const s = new ScramServer({ verifier: v, username: 'user', serverNonce: SERVER_NONCE });
    s.handleInitial(SCRAM_SHA_256, b(CLIENT_FIRST));
    const proof = Buffer.from(CLIENT_FINAL.split(',p=')[1] as string, 'base64');
    proof[31] = (proof[31] as number) ^ 0x80;
    const r = s.handleFinal(b(`c=biws,r=${CLIENT_NONCE}${SERVER_NONCE},p=${proof.toString('base64')}`));
    assert.ok('error' in r);
    assert.equal(r.error.kind, SCRAM_ERROR.AuthFailed);
  });
});

// ---------------------------------------------------------------- verifiers

describe('verifiers', () => {
  it('makeVerifier -> formatVerifier -> parseVerifier round trip, with PostgreSQL defaults', async () => {
    const v = await makeVerifier('pencil');
    assert.equal(v.iterations, 4096);
    assert.equal(v.salt.length, 16);
    const s = formatVerifier(v);
    assert.match(s, /^SCRAM-SHA-256\$4096:[A-Za-z0-9+/]{22}==\$[A-Za-z0-9+/]{43}=:[A-Za-z0-9+/]{43}=$/);
    assert.deepEqual(parseVerifier(s), v);
    const keys = await deriveKeys('pencil', v.salt, v.iterations);
    assert.deepEqual(createHash('sha256').update(keys.clientKey).digest(), v.storedKey);
    assert.deepEqual(keys.serverKey, v.serverKey);
    // A fresh salt each time.
    assert.notDeepEqual((await makeVerifier('pencil')).salt, v.salt);
  });

  it('parseVerifier refuses everything else', async () => {
    const good = formatVerifier(await pencil());
    const [head, keys] = [good.slice(0, good.lastIndexOf('$')), good.slice(good.lastIndexOf('$') + 1)];
    const shortKey = Buffer.alloc(31).toString('base64');
    for (const bad of [
      'md5d41d8cd98f00b204e9800998ecf8427e',
      '',
      good.replace('SCRAM-SHA-256', 'SCRAM-SHA-1'),
      good.replace('$4096:', '$0:'),
      good.replace('$4096:', '$-1:'),
      good.replace('$4096:', '$4096x:'),
      good.replace('$4096:', '$99999999999:'),
      `${head}$${shortKey}:${keys.split(':')[1]}`,
      `${head}$${keys.split(':')[0]}:!!!!`,
      `${head}$${keys.split(':')[0]}`,
      `${good}:extra`,
      good.replace(/:[^$]+\$/, ':$'),
    ]) {
      assert.equal(parseVerifier(bad), null, bad);
    }
  });

  it('makeVerifier validates its options', async () => {
    await assert.rejects(makeVerifier('x', { iterations: 0 }), RangeError);
    await assert.rejects(makeVerifier('x', { salt: Buffer.alloc(0) }), RangeError);
  });
});

// ---------------------------------------------------------------- round trips

describe('ScramServer <-> ScramClient', () => {
  const cb = randomBytes(32);

  it('plaintext: SCRAM-SHA-256 with n, and the recovered ClientKey is the client key', async () => {
    const s = server(await pencil());
    assert.deepEqual(s.mechanisms(), [SCRAM_SHA_256]);
    const c = client({ password: 'pencil' });
    const o = await exchange(s, c);
    assert.ok(o.ok, o.ok ? '' : o.error.reason);
    assert.equal(o.mechanism, SCRAM_SHA_256);
    assert.deepEqual(o.clientKey, c.keys?.clientKey);
  });

  it('TLS with channel binding: SCRAM-SHA-256-PLUS', async () => {
    const s = server(await pencil(), { channelBinding: cb });
    assert.deepEqual(s.mechanisms(), [SCRAM_SHA_256_PLUS, SCRAM_SHA_256]);
    const o = await exchange(s, client({ password: 'pencil', channelBinding: cb }));
    assert.ok(o.ok, o.ok ? '' : o.error.reason);
    assert.equal(o.mechanism, SCRAM_SHA_256_PLUS);
  });

  it("TLS client, server without binding: 'y' is accepted", async () => {
    const s = server(await pencil());
    const c = client({ password: 'pencil', tls: true });
    c.chooseMechanism(s.mechanisms());
    const init = c.initial();
    assert.equal(init.data.subarray(0, 3).toString(), 'y,,');
    const first = s.handleInitial(init.mechanism, init.data);
    assert.ok('serverFirst' in first);
    const final = s.handleFinal(await c.handleContinue(first.serverFirst));
    assert.ok('serverFinal' in final, 'error' in final ? final.error.reason : '');
  });

  it("TLS client without binding data while PLUS is offered sends 'n', not 'y'", async () => {
    const s = server(await pencil(), { channelBinding: cb });
    const c = client({ password: 'pencil', tls: true });
    const o = await exchange(s, c);
    assert.ok(o.ok, o.ok ? '' : o.error.reason);
    assert.equal(o.mechanism, SCRAM_SHA_256);
  });

  it('wrong password fails with auth-failed', async () => {
    failedWith(await exchange(server(await pencil()), client({ password: 'pencil!' })), SCRAM_ERROR.AuthFailed);
    failedWith(
      await exchange(server(await pencil(), { channelBinding: cb }), client({ password: 'Pencil', channelBinding: cb })),
      SCRAM_ERROR.AuthFailed,
    );
  });

  it("downgrade: 'y' while the server offered PLUS fails", async () => {
    const s = server(await pencil(), { channelBinding: cb });
    // A man in the middle stripped PLUS from the list the client saw.
    const o = await exchange(s, client({ password: 'pencil', channelBinding: cb }), [SCRAM_SHA_256]);
    assert.match(failedWith(o, SCRAM_ERROR.ChannelBinding).reason, /downgrade/);
  });

  it("'p' with mismatched binding data fails", async () => {
    const s = server(await pencil(), { channelBinding: cb });
    const o = await exchange(s, client({ password: 'pencil', channelBinding: randomBytes(32) }));
    assert.match(failedWith(o, SCRAM_ERROR.ChannelBinding).reason, /channel binding check failed/);
  });

  it("'p' or PLUS without TLS fails", async () => {
    assert.equal(initialKind(server(await pencil()), SCRAM_SHA_256_PLUS, 'p=tls-server-end-point,,n=,r=abc'), SCRAM_ERROR.Mechanism);
    assert.equal(initialKind(server(await pencil()), SCRAM_SHA_256, 'p=tls-server-end-point,,n=,r=abc'), SCRAM_ERROR.ChannelBinding);
    // Same on TLS: 'p' needs the PLUS mechanism, and PLUS needs 'p'.
    assert.equal(
      initialKind(server(await pencil(), { channelBinding: cb }), SCRAM_SHA_256, 'p=tls-server-end-point,,n=,r=abc'),
      SCRAM_ERROR.ChannelBinding,
    );
    assert.equal(
      initialKind(server(await pencil(), { channelBinding: cb }), SCRAM_SHA_256_PLUS, 'n,,n=,r=abc'),
      SCRAM_ERROR.ChannelBinding,
    );
    assert.equal(
      initialKind(server(await pencil(), { channelBinding: cb }), SCRAM_SHA_256_PLUS, 'p=tls-unique,,n=,r=abc'),
      SCRAM_ERROR.ChannelBinding,
    );
    assert.equal(initialKind(server(await pencil(), { channelBinding: cb }), SCRAM_SHA_256_PLUS, 'p=tls-server-end-point,,n=,r=abc'), 'ok');
  });

  it('unknown user: a mock exchange that looks real and fails like a wrong password', async () => {
    const wrong = failedWith(await exchange(server(await pencil()), client({ password: 'guess' })), SCRAM_ERROR.AuthFailed);
    const unknown = failedWith(await exchange(server(null, { username: 'ghost' }), client({ password: 'guess' })), SCRAM_ERROR.AuthFailed);
    assert.equal(unknown.kind, wrong.kind);
    // Even the right "password" for a mock cannot pass.
    const mock = mockVerifier('ghost');
    const keys = await deriveKeys('guess', mock.salt, mock.iterations);
    failedWith(await exchange(server(null, { username: 'ghost' }), client({ keys })), SCRAM_ERROR.AuthFailed);

    // The server-first-message has the shape of a real one; the salt is stable per name.
    const firstOf = (s: ScramServer): string => {
      const r = s.handleInitial(SCRAM_SHA_256, b('n,,n=,r=abc'));
      assert.ok('serverFirst' in r);
      return r.serverFirst.toString('latin1');
    };
    const saltOf = (first: string): string => /,s=([^,]+),/.exec(first)?.[1] ?? '';
    const ghost = firstOf(server(null, { username: 'ghost' }));
    assert.match(ghost, /^r=abc[A-Za-z0-9+/]{24},s=[A-Za-z0-9+/]{22}==,i=4096$/);
    assert.match(firstOf(server(await pencil())), /^r=abc[A-Za-z0-9+/]{24},s=[A-Za-z0-9+/]{22}==,i=4096$/);
    assert.equal(saltOf(firstOf(server(null, { username: 'ghost' }))), saltOf(ghost));
    assert.notEqual(saltOf(firstOf(server(null, { username: 'ghost2' }))), saltOf(ghost));
    assert.notEqual(saltOf(firstOf(server(null, { username: 'ghost', mockSecret: randomBytes(32) }))), saltOf(ghost));
    assert.match(firstOf(server(null, { username: 'ghost', mockIterations: 600000 })), /,i=600000$/);
  });

  it('passthrough: the recovered ClientKey plus the ServerKey log in again', async () => {
    const v = await pencil();
    const first = await exchange(server(v), client({ password: 'pencil' }));
    assert.ok(first.ok);
    const keys = { clientKey: first.clientKey, serverKey: v.serverKey, storedKey: v.storedKey, salt: v.salt, iterations: v.iterations };
    const c = client({ keys, channelBinding: cb });
    assert.ok((await exchange(server(v, { channelBinding: cb }), c)).ok);
    assert.deepEqual(c.keys, { clientKey: first.clientKey, serverKey: v.serverKey });
    // A server whose verifier has another salt (the password was set again) cannot accept them.
    const other = await makeVerifier('pencil');
    failedWith(await exchange(server(other), client({ keys })), SCRAM_ERROR.Keys);
    // Without salt/iterations the mismatch shows up as a refused proof.
    failedWith(
      await exchange(server(other), client({ keys: { clientKey: keys.clientKey, serverKey: keys.serverKey } })),
      SCRAM_ERROR.AuthFailed,
    );
    // A ClientKey that does not belong to the StoredKey is refused up front.
    assert.throws(
      () => client({ keys: { ...keys, clientKey: randomBytes(32) } }),
      (e: ScramError) => e.kind === SCRAM_ERROR.Keys,
    );
  });

  it('a key cache avoids the derivation on the next login', async () => {
    const v = await pencil();
    const cache = new Map<string, ScramKeys>();
    assert.ok((await exchange(server(v), client({ password: 'pencil', cache }))).ok);
    assert.equal(cache.size, 1);
    // Only the cached keys can make a wrong password succeed: proof that they were used.
    assert.ok((await exchange(server(v), client({ password: 'not pencil', cache }))).ok);
    assert.equal((await exchange(server(v), client({ password: 'not pencil' }))).ok, false);
  });

  it('requireChannelBinding refuses to go without PLUS', async () => {
    const c = client({ password: 'pencil', channelBinding: cb, requireChannelBinding: true });
    assert.throws(
      () => c.chooseMechanism([SCRAM_SHA_256]),
      (e: ScramError) => e.kind === SCRAM_ERROR.ChannelBinding,
    );
    const noData = client({ password: 'pencil', tls: true, requireChannelBinding: true });
    assert.throws(
      () => noData.chooseMechanism([SCRAM_SHA_256_PLUS, SCRAM_SHA_256]),
      (e: ScramError) => e.kind === SCRAM_ERROR.ChannelBinding,
    );
    assert.throws(
      () => client({ password: 'pencil' }).chooseMechanism(['SCRAM-SHA-1', 'OAUTHBEARER']),
      (e: ScramError) => e.kind === SCRAM_ERROR.Mechanism,
    );
  });

  it('usernames are saslname-escaped and do not matter to the server', async () => {
    const c = client({ password: 'pencil', username: 'a=b,cé' });
    c.chooseMechanism([SCRAM_SHA_256]);
    const init = c.initial();
    assert.equal(init.data.toString('utf8').split(',r=')[0], 'n,,n=a=3Db=2Ccé');
    const s = server(await pencil());
    const first = s.handleInitial(init.mechanism, init.data);
    assert.ok('serverFirst' in first);
    assert.ok('serverFinal' in s.handleFinal(await c.handleContinue(first.serverFirst)));
  });
});

// ---------------------------------------------------------------- message checks

describe('ScramServer message checks', () => {
  it('client-first-message: authzid, extensions, flags, nonces', async () => {
    const v = await pencil();
    const cases: Array<[string | Buffer, string]> = [
      ['n,a=bob,n=,r=abc', SCRAM_ERROR.Unsupported],
      ['n,,m=ext,n=,r=abc', SCRAM_ERROR.Unsupported],
      ['x,,n=,r=abc', SCRAM_ERROR.Malformed],
      ['n,x,n=,r=abc', SCRAM_ERROR.Malformed],
      ['n=,r=abc', SCRAM_ERROR.Malformed],
      ['n,,r=abc', SCRAM_ERROR.Malformed],
      ['n,,n=', SCRAM_ERROR.Malformed],
      ['n,,n=,r=', SCRAM_ERROR.Malformed],
      ['n,,n=,r=a\u007fc', SCRAM_ERROR.Malformed],
      [Buffer.from('n,,n=\0,r=abc', 'latin1'), SCRAM_ERROR.Malformed],
      ['n,,n=,r=abc,!', SCRAM_ERROR.Malformed],
      ['', SCRAM_ERROR.Malformed],
      ['n,,n=,r=abc,x=extension', 'ok'],
      [Buffer.from('n,,n=\xff\xfe,r=abc', 'latin1'), 'ok'],
    ];
    for (const [msg, kind] of cases) assert.equal(initialKind(server(v), SCRAM_SHA_256, msg), kind, String(msg));
    assert.equal(initialKind(server(v), 'SCRAM-SHA-1', 'n,,n=,r=abc'), SCRAM_ERROR.Mechanism);
  });

  it('client-final-message: binding attribute, nonce, proof, garbage', async () => {
    const v = await pencil();
    /** A server after a valid client-first with nonce "abc"; its combined nonce. */
    const started = (flag = 'n'): [ScramServer, string] => {
      const s = server(v, { serverNonce: 'SERVERNONCE' });
      assert.ok('serverFirst' in s.handleInitial(SCRAM_SHA_256, b(`${flag},,n=,r=abc`)));
      return [s, 'abcSERVERNONCE'];
    };
    const proof = Buffer.alloc(32).toString('base64');
    const finalKind = (msg: string, flag = 'n'): string => {
      const [s] = started(flag);
      const r = s.handleFinal(b(msg));
      return 'error' in r ? r.error.kind : 'ok';
    };
    const n = 'abcSERVERNONCE';
    assert.equal(finalKind(`c=biws,r=${n},p=${proof}`), SCRAM_ERROR.AuthFailed);
    assert.equal(finalKind(`c=eSws,r=${n},p=${proof}`), SCRAM_ERROR.ChannelBinding); // 'y,,' after 'n'
    assert.equal(finalKind(`c=eSws,r=${n},p=${proof}`, 'y'), SCRAM_ERROR.AuthFailed);
    assert.equal(finalKind(`c=biws,r=${n},p=${proof}`, 'y'), SCRAM_ERROR.ChannelBinding);
    assert.equal(finalKind(`c=biws,r=abc,p=${proof}`), SCRAM_ERROR.Nonce);
    assert.equal(finalKind(`c=biws,r=${n}x,p=${proof}`), SCRAM_ERROR.Nonce);
    assert.equal(finalKind(`c=biws,r=${n},p=${Buffer.alloc(31).toString('base64')}`), SCRAM_ERROR.Malformed);
    assert.equal(finalKind(`c=biws,r=${n},p=${proof.slice(1)}`), SCRAM_ERROR.Malformed);
    assert.equal(finalKind(`c=biws,r=${n},p=${proof},x=1`), SCRAM_ERROR.Malformed);
    assert.equal(finalKind(`c=biws,r=${n},p=${proof},`), SCRAM_ERROR.Malformed);
    assert.equal(finalKind(`c=biws,r=${n}`), SCRAM_ERROR.Malformed);
    assert.equal(finalKind(`r=${n},c=biws,p=${proof}`), SCRAM_ERROR.Malformed);
    assert.equal(finalKind(`c=biws,r=${n},x=ext,p=${proof}`), SCRAM_ERROR.AuthFailed);
  });

  it('order: final before initial, anything after a failure', async () => {
    const s = server(await pencil());
    const r = s.handleFinal(b('c=biws,r=abc,p=x'));
    assert.ok('error' in r && r.error.kind === SCRAM_ERROR.State);
    assert.equal(initialKind(s, SCRAM_SHA_256, 'n,,n=,r=abc'), SCRAM_ERROR.State);
    const t = server(await pencil());
    assert.equal(initialKind(t, SCRAM_SHA_256, 'n,,n=,r=abc'), 'ok');
    assert.equal(initialKind(t, SCRAM_SHA_256, 'n,,n=,r=abc'), SCRAM_ERROR.State);
  });

  it('reasons never carry secrets', async () => {
    const v = await pencil();
    const s = server(v);
    s.handleInitial(SCRAM_SHA_256, b('n,,n=,r=abc'));
    const proof = randomBytes(32).toString('base64');
    const r = s.handleFinal(b(`c=biws,r=bad,p=${proof}`));
    assert.ok('error' in r);
    for (const secret of [proof, v.storedKey.toString('base64'), v.serverKey.toString('base64')])
      assert.ok(!r.error.reason.includes(secret));
  });
});

describe('ScramClient message checks', () => {
  async function continued(serverFirst: string, extra: { maxIterations?: number } = {}): Promise<string> {
    const c = client({ password: 'pencil', clientNonce: 'abc', ...extra });
    c.chooseMechanism([SCRAM_SHA_256]);
    c.initial();
    try {
      await c.handleContinue(b(serverFirst));
      return c.warning ? `ok: ${c.warning}` : 'ok';
    } catch (err) {
      assert.ok(err instanceof ScramError, String(err));
      return err.kind;
    }
  }
  const salt = Buffer.alloc(16, 7).toString('base64');

  it('server-first-message: nonce, salt, iterations', async () => {
    assert.equal(await continued(`r=abcXYZ,s=${salt},i=4096`), 'ok');
    assert.equal(await continued(`r=abc,s=${salt},i=4096`), SCRAM_ERROR.Nonce);
    assert.equal(await continued(`r=abXYZ,s=${salt},i=4096`), SCRAM_ERROR.Nonce);
    assert.equal(await continued(`r=xabc,s=${salt},i=4096`), SCRAM_ERROR.Nonce);
    assert.equal(await continued(`r=abcX Y,s=${salt},i=4096`), SCRAM_ERROR.Nonce);
    assert.equal(await continued(`m=x,r=abcXYZ,s=${salt},i=4096`), SCRAM_ERROR.Unsupported);
    assert.equal(await continued(`r=abcXYZ,s=,i=4096`), SCRAM_ERROR.Malformed);
    assert.equal(await continued(`r=abcXYZ,s=%%%%,i=4096`), SCRAM_ERROR.Malformed);
    assert.equal(await continued(`r=abcXYZ,s=${salt},i=0`), SCRAM_ERROR.Malformed);
    assert.equal(await continued(`r=abcXYZ,s=${salt},i=-1`), SCRAM_ERROR.Malformed);
    assert.equal(await continued(`r=abcXYZ,s=${salt},i=4096x`), SCRAM_ERROR.Malformed);
    assert.equal(await continued(`r=abcXYZ,s=${salt}`), SCRAM_ERROR.Malformed);
    assert.equal(await continued(`r=abcXYZ,s=${salt},i=4096,!`), SCRAM_ERROR.Malformed);
    assert.equal(await continued(`r=abcXYZ,s=${salt},i=4096,x=ext`), 'ok');
    assert.equal(await continued(`r=abcXYZ,s=${salt},i=20000000`), SCRAM_ERROR.Parameters);
    assert.equal(await continued(`r=abcXYZ,s=${salt},i=5000`, { maxIterations: 4999 }), SCRAM_ERROR.Parameters);
    assert.match(await continued(`r=abcXYZ,s=${salt},i=1`), /^ok: server uses only 1 SCRAM iterations/);
  });

  it('server-final-message: e= errors, garbage, order', async () => {
    const ready = async (): Promise<ScramClient> => {
      const c = client({ password: 'pencil', clientNonce: 'abc' });
      c.chooseMechanism([SCRAM_SHA_256]);
      c.initial();
      await c.handleContinue(b(`r=abcXYZ,s=${salt},i=4096`));
      return c;
    };
    const kind = (f: () => void): string => {
      try {
        f();
        return 'ok';
      } catch (err) {
        assert.ok(err instanceof ScramError);
        return err.kind;
      }
    };
    const c1 = await ready();
    assert.equal(
      kind(() => c1.handleFinal(b('e=invalid-proof'))),
      SCRAM_ERROR.ServerError,
    );
    assert.equal(c1.done, false);
    const c2 = await ready();
    assert.equal(
      kind(() => c2.handleFinal(b('v=!!'))),
      SCRAM_ERROR.ServerSignature,
    );
    const c3 = await ready();
    assert.equal(
      kind(() => c3.handleFinal(b('x=1'))),
      SCRAM_ERROR.Malformed,
    );
    // After a failure nothing more is accepted.
    assert.equal(
      kind(() => c3.handleFinal(b('v=AAAA'))),
      SCRAM_ERROR.State,
    );
    const fresh = client({ password: 'pencil' });
    assert.equal(
      kind(() => fresh.initial()),
      SCRAM_ERROR.State,
    );
    await assert.rejects(
      client({ password: 'pencil' }).handleContinue(b('r=x,s=AAAA,i=1')),
      (e: ScramError) => e.kind === SCRAM_ERROR.State,
    );
  });
});

// ---------------------------------------------------------------- SASLprep

describe('saslprep', () => {
  it('ASCII is returned as is', () => {
    assert.equal(saslprep('pencil'), 'pencil');
    // Even ASCII controls: PostgreSQL's fast path skips the checks for pure ASCII.
    assert.equal(saslprep('a\tb'), 'a\tb');
    const buf = Buffer.from('pencil');
    assert.equal(saslprepBytes(buf), buf);
  });

  it('maps non-ASCII spaces to space and removes commonly-mapped-to-nothing characters', () => {
    assert.equal(saslprep('I\u00A0X'), 'I X');
    assert.equal(saslprep('a\u3000b\u2003c'), 'a b c');
    assert.equal(saslprep('pa\u00ADss'), 'pass');
    assert.equal(saslprep('x\uFEFFy\u200Dz\uFE0F'), 'xyz');
    // U+200B is in both tables; PostgreSQL checks the spaces first (confirmed against a server below).
    assert.equal(saslprep('a\u200Bb'), 'a b');
  });

  it('normalizes with NFKC', () => {
    assert.equal(saslprep('\u2168'), 'IX');
    assert.equal(saslprep('\uFB01x'), 'fix');
    assert.equal(saslprep('e\u0301'), '\u00E9');
    assert.equal(saslprep('\u00AA'), 'a');
  });

  it('prohibited output falls back to the raw password', () => {
    for (const pw of [
      'bell\u0007\u00E9', // C.2.1 ASCII control, in a non-ASCII string
      '\uE000x\u2168', // C.3 private use
      '\u2168\u{1F600}', // A.1: unassigned in Unicode 3.2 (NFKC alone would give "IX...")
      '\u00E9\u2FF0', // C.7 ideographic description
      '\u00AD', // maps to nothing at all
      '\u0627\u0031', // bidi: RandALCat first but not last
      'a\u0627', // bidi: RandALCat mixed with LCat
      'x\uD800y\u00E9', // lone surrogate (C.5)
    ]) {
      assert.equal(saslprepStrict(pw), null, JSON.stringify(pw));
      assert.equal(saslprep(pw), pw);
    }
    assert.equal(saslprepStrict('\u0627\u0031\u0628'), '\u0627\u0031\u0628');
    assert.equal(saslprepStrict('\u05D0\u{1D7CE}\u05D1'), '\u05D0\u0030\u05D1');
  });

  it('bytes: invalid UTF-8 is used raw; valid UTF-8 is prepared', () => {
    const invalid = Buffer.from([0x70, 0xff, 0xe2, 0x85]);
    assert.equal(saslprepBytes(invalid), invalid);
    assert.deepEqual(saslprepBytes(Buffer.from('\u2168\u00AD')), Buffer.from('IX'));
    const prohibited = Buffer.from('\u2168\u{1F600}');
    assert.equal(saslprepBytes(prohibited), prohibited);
  });

  it('the verifier is computed from the prepared password', async () => {
    const salt = randomBytes(16);
    assert.deepEqual(await makeVerifier('\u2168\u00AD', { salt }), await makeVerifier('IX', { salt }));
    assert.notDeepEqual(await makeVerifier('\u2168\u{1F600}', { salt }), await makeVerifier('IX\u{1F600}', { salt }));
  });
});

// ---------------------------------------------------------------- channel binding data

describe('tlsServerEndPoint', () => {
  let dir = '';
  const certs = new Map<string, Buffer>();

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'postern-scram-certs-'));
    const make = (name: string, keyArgs: string[], digest: string[]): void => {
      const pem = join(dir, `${name}.crt`);
      execFileSync(
        'openssl',
        [
          'req',
          '-x509',
          ...keyArgs,
          '-nodes',
          '-keyout',
          join(dir, `${name}.key`),
          '-out',
          pem,
          '-subj',
          `/CN=${name}`,
          '-days',
          '1',
          ...digest,
        ],
        { stdio: 'ignore' },
      );
      certs.set(name, new X509Certificate(readFileSync(pem)).raw);
    };
    const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256'];
    make('ec-sha256', ec, ['-sha256']);
    make('ec-sha512', ec, ['-sha512']);
    make('ec-sha1', ec, ['-sha1']);
    make('rsa-sha384', ['-newkey', 'rsa:2048'], ['-sha384']);
    make('ed25519', ['-newkey', 'ed25519'], []);
  });

  after(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const hash = (alg: string, der: Buffer): Buffer => createHash(alg).update(der).digest();

  it('hashes with the signature hash: ECDSA P-256 SHA-256, RSA SHA-384, ECDSA SHA-512', () => {
    const ec = certs.get('ec-sha256')!;
    assert.equal(certificateSignatureOid(ec), '1.2.840.10045.4.3.2');
    assert.deepEqual(tlsServerEndPoint(ec), hash('sha256', ec));
    const rsa = certs.get('rsa-sha384')!;
    assert.equal(certificateSignatureOid(rsa), '1.2.840.113549.1.1.12');
    assert.deepEqual(tlsServerEndPoint(rsa), hash('sha384', rsa));
    assert.equal(tlsServerEndPoint(rsa)?.length, 48);
    const ec512 = certs.get('ec-sha512')!;
    assert.deepEqual(tlsServerEndPoint(ec512), hash('sha512', ec512));
  });

  it('upgrades SHA-1 to SHA-256', () => {
    const der = certs.get('ec-sha1')!;
    assert.equal(certificateSignatureOid(der), '1.2.840.10045.4.1');
    assert.deepEqual(tlsServerEndPoint(der), hash('sha256', der));
  });

  it('is null when the algorithm has no hash of its own (Ed25519) or the DER is broken', () => {
    const ed = certs.get('ed25519')!;
    assert.equal(certificateSignatureOid(ed), '1.3.101.112');
    assert.equal(tlsServerEndPoint(ed), null);
    const ec = certs.get('ec-sha256')!;
    for (const bad of [
      Buffer.alloc(0),
      Buffer.from([0x30]),
      Buffer.from([0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
      ec.subarray(0, ec.length - 80),
      randomBytes(200),
    ]) {
      assert.equal(tlsServerEndPoint(bad), null);
    }
  });
});

// ---------------------------------------------------------------- passwd

describe('passwd helpers', () => {
  it('formatUsersFileLine quotes PgBouncer-style', () => {
    assert.equal(formatUsersFileLine('alice', 'SCRAM-SHA-256$4096:c2FsdA==$a:b'), '"alice" "SCRAM-SHA-256$4096:c2FsdA==$a:b"');
    assert.equal(formatUsersFileLine('a"b', 'p"w""'), '"a""b" "p""w"""""');
    assert.throws(() => formatUsersFileLine('a\nb', 'x'), TypeError);
    assert.throws(() => formatUsersFileLine('a', 'x\r'), TypeError);
    assert.throws(() => formatUsersFileLine('', 'x'), TypeError);
  });

  it('reads one line from a pipe, without a prompt, and leaves the rest', async () => {
    const input = new PassThrough();
    const output = new PassThrough();
    input.end('s3cret pw\r\nnext line\n');
    assert.equal(await readPasswordNoEcho('Password: ', input, output), 's3cret pw');
    assert.equal(output.read(), null);
    assert.equal(String(input.read()), 'next line\n');

    const last = new PassThrough();
    last.end('no newline \u00E9');
    assert.equal(await readPasswordNoEcho('Password: ', last, output), 'no newline \u00E9');
    const empty = new PassThrough();
    empty.end();
    await assert.rejects(readPasswordNoEcho('Password: ', empty, output), /no password/);
  });

  function fakeTty(): { input: PassThrough & PasswordInput; modes: boolean[] } {
    const modes: boolean[] = [];
    const input = new PassThrough() as PassThrough & PasswordInput;
    input.isTTY = true;
    input.isRaw = false;
    input.setRawMode = (mode: boolean) => {
      modes.push(mode);
      input.isRaw = mode;
      return input;
    };
    return { input, modes };
  }

  it('on a TTY: prompt, raw mode without echo, editing keys, mode restored', async () => {
    const { input, modes } = fakeTty();
    const output = new PassThrough();
    const p = readPasswordNoEcho('Password: ', input, output);
    const e = Buffer.from('\u00E9');
    input.write('xy\u0015se\u007f');
    input.write(e.subarray(0, 1)); // a character split across reads
    input.write(Buffer.concat([e.subarray(1), Buffer.from('cret\r')]));
    assert.equal(await p, 's\u00E9cret');
    assert.deepEqual(modes, [true, false]);
    assert.equal(String(output.read()), 'Password: \n');
  });

  it('on a TTY: Ctrl-C aborts and restores the mode', async () => {
    const { input, modes } = fakeTty();
    const p = readPasswordNoEcho('Password: ', input, new PassThrough());
    input.write('abc\u0003');
    await assert.rejects(p, /interrupted/);
    assert.deepEqual(modes, [true, false]);
  });
});

// ---------------------------------------------------------------- real PostgreSQL

/** Passwords whose SASLprep is not trivial; PostgreSQL hashes them and we must agree. */
const PREP_CASES: Array<[string, string]> = [
  ['roman', '\u2168x'],
  ['nbsp', 'pass\u00A0word'],
  ['shy', 'soft\u00ADhyphen'],
  ['zwsp', 'a\u200Bb'],
  ['ligature', '\uFB01le'],
  ['decomposed', 'e\u0301t\u00E9'],
  ['control', 'bell\u0007\u00E9'],
  ['bidi_bad', '\u0627\u0031'],
  ['bidi_ok', '\u0627\u0031\u0628'],
  ['unassigned', '\u2168\u{1F600}'],
  ['nothing', '\u00AD'],
];

describe('against a real PostgreSQL', () => {
  let dir = '';
  let pgCerts: CertSet;
  let cluster: PgCluster;
  let ca: Buffer;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'postern-scram-pg-'));
    pgCerts = await generateCerts(dir);
    ca = readFileSync(pgCerts.ca.cert);
    cluster = await startPostgres({
      tls: { cert: pgCerts.server.cert, key: pgCerts.server.key, ca: pgCerts.ca.cert },
      users: [
        { name: 'bob', password: 'initial' },
        { name: 'carol', password: 'carol-pw' },
        ...PREP_CASES.map(([name, password]) => ({ name: `prep_${name}`, password })),
      ],
    });
  });

  after(async () => {
    await cluster?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const storedVerifier = (role: string): Promise<string> => cluster.psql(`select rolpassword from pg_authid where rolname = '${role}'`);

  it('(a) PostgreSQL accepts a verifier from makeVerifier', async () => {
    const v = formatVerifier(await makeVerifier('s3cret'));
    await cluster.psql(`ALTER ROLE bob PASSWORD '${v}'`);
    assert.equal(await storedVerifier('bob'), v);
    assert.equal(await cluster.psql('select current_user', { user: 'bob', password: 's3cret' }), 'bob');
    await assert.rejects(cluster.psql('select 1', { user: 'bob', password: 'S3cret' }), /password authentication failed/);
    // libpq prepares what it is given: "IX" logs in where the verifier was made from U+2168 and a soft hyphen.
    await cluster.psql(`ALTER ROLE bob PASSWORD '${formatVerifier(await makeVerifier('\u2168\u00ADpass'))}'`);
    assert.equal(await cluster.psql('select current_user', { user: 'bob', password: 'IXpass' }), 'bob');
  });

  it("(b) PostgreSQL's verifier parses and drives a ScramServer", async () => {
    const stored = await storedVerifier('carol');
    const v = parseVerifier(stored);
    assert.ok(v, stored);
    assert.equal(formatVerifier(v), stored);
    assert.ok((await exchange(new ScramServer({ verifier: v, username: 'carol' }), client({ password: 'carol-pw' }))).ok);
    failedWith(
      await exchange(new ScramServer({ verifier: v, username: 'carol' }), client({ password: 'carol-PW' })),
      SCRAM_ERROR.AuthFailed,
    );
  });

  it('SASLprep agrees with the server on every tricky password', async () => {
    const rows = await cluster.psql("select rolname || ' ' || rolpassword from pg_authid where rolname like 'prep\\_%'");
    const stored = new Map(rows.split('\n').map((l) => l.split(' ') as [string, string]));
    assert.equal(stored.size, PREP_CASES.length);
    for (const [name, password] of PREP_CASES) {
      const v = parseVerifier(stored.get(`prep_${name}`) ?? '');
      assert.ok(v, name);
      const keys = await deriveKeys(password, v.salt, v.iterations);
      assert.deepEqual(keys.serverKey, v.serverKey, `${name}: ${JSON.stringify(password)}`);
      // Where SASLprep changes the password, hashing it unprepared must not match: the case tests something.
      const raw = pbkdf2Sync(Buffer.from(password), v.salt, v.iterations, 32, 'sha256');
      const rawServerKey = createHmac('sha256', raw).update('Server Key').digest();
      assert.equal(rawServerKey.equals(v.serverKey), saslprep(password) === password, name);
    }
  });

  it('(c) ScramClient over TLS with channel binding reaches AuthenticationOk', async () => {
    const r = await login(cluster.port, 'carol', true, (cert) => client({ password: 'carol-pw', channelBinding: tlsServerEndPoint(cert) }));
    assert.deepEqual(r, { ok: true, mechanisms: [SCRAM_SHA_256_PLUS, SCRAM_SHA_256], mechanism: SCRAM_SHA_256_PLUS, done: true });
    // Our server offers the same list on TLS.
    assert.deepEqual(new ScramServer({ verifier: null, username: 'x', channelBinding: randomBytes(32) }).mechanisms(), r.mechanisms);
  });

  it('(c) ScramClient in plaintext reaches AuthenticationOk', async () => {
    const r = await login(cluster.port, 'carol', false, () => client({ password: 'carol-pw' }));
    assert.deepEqual(r, { ok: true, mechanisms: [SCRAM_SHA_256], mechanism: SCRAM_SHA_256, done: true });
  });

  it('(c) the server refuses wrong binding data, a downgrade, and a wrong password', async () => {
    const wrongCb = await login(cluster.port, 'carol', true, () => client({ password: 'carol-pw', channelBinding: randomBytes(32) }));
    assert.equal(wrongCb.ok ? 'ok' : wrongCb.code, '28000');
    // 'y' although PLUS was offered: PostgreSQL, like ScramServer, calls it a downgrade.
    const downgrade = await login(cluster.port, 'carol', true, () => client({ password: 'carol-pw', tls: true }), [SCRAM_SHA_256]);
    assert.equal(downgrade.ok ? 'ok' : downgrade.code, '28000');
    const wrong = await login(cluster.port, 'carol', false, () => client({ password: 'nope' }));
    assert.equal(wrong.ok ? 'ok' : wrong.code, '28P01');
  });

  it('(c) SCRAM passthrough: keys recovered by a ScramServer log into the server', async () => {
    const v = parseVerifier(await storedVerifier('carol'));
    assert.ok(v);
    // The application authenticates to Postern (over its own TLS connection) ...
    const postern = randomBytes(32);
    const front = await exchange(
      new ScramServer({ verifier: v, username: 'carol', channelBinding: postern }),
      client({ password: 'carol-pw', channelBinding: postern }),
    );
    assert.ok(front.ok);
    // ... and Postern logs in with what it learned, never having seen the password.
    const keys = { clientKey: front.clientKey, serverKey: v.serverKey, storedKey: v.storedKey, salt: v.salt, iterations: v.iterations };
    const r = await login(cluster.port, 'carol', true, (cert) => client({ keys, channelBinding: tlsServerEndPoint(cert) }));
    assert.deepEqual(r, { ok: true, mechanisms: [SCRAM_SHA_256_PLUS, SCRAM_SHA_256], mechanism: SCRAM_SHA_256_PLUS, done: true });
    const bogus = await login(cluster.port, 'carol', false, () => client({ keys: { clientKey: randomBytes(32), serverKey: v.serverKey } }));
    assert.equal(bogus.ok ? 'ok' : bogus.code, '28P01');
  });

  type LoginResult =
    | { ok: true; mechanisms: string[]; mechanism: string; done: boolean }
    | { ok: false; code: string | undefined; message?: string | undefined };

  /** A minimal test-only client: (SSLRequest + TLS), StartupMessage, then SASL driven by a ScramClient. */
  async function login(
    port: number,
    user: string,
    useTls: boolean,
    make: (serverCertDer: Buffer) => ScramClient,
    offeredOverride?: string[],
  ): Promise<LoginResult> {
    let socket: net.Socket = net.connect({ host: '127.0.0.1', port });
    try {
      await new Promise<void>((done, fail) => socket.once('connect', done).once('error', fail));
      let cert = Buffer.alloc(0);
      if (useTls) {
        socket.write(SSL_REQUEST);
        const answer = await new Promise<Buffer>((done, fail) => socket.once('data', done).once('error', fail));
        assert.equal(answer.toString('latin1'), 'S');
        const secure = tls.connect({ socket, ca, servername: 'localhost' });
        await new Promise<void>((done, fail) => secure.once('secureConnect', done).once('error', fail));
        socket = secure;
        cert = secure.getPeerCertificate(true).raw;
      }
      const conn = new Frames(socket);
      socket.write(
        encodeStartup(PROTOCOL_3_0, [
          ['user', user],
          ['database', 'postgres'],
        ]),
      );
      let scram: ScramClient | null = null;
      let mechanisms: string[] = [];
      for (;;) {
        const frame = await conn.next();
        if (frame[0] === 0x45) {
          const e = decodeNotice(frame);
          return { ok: false, code: e.code, message: e.message };
        }
        const auth = decodeAuth(frame);
        const data = Buffer.from(auth.data);
        switch (auth.code) {
          case AUTH.SASL: {
            mechanisms = decodeSaslMechanisms(data);
            scram = make(cert);
            scram.chooseMechanism(offeredOverride ?? mechanisms);
            const init = scram.initial();
            socket.write(encodeSaslInitial(init.mechanism, init.data));
            break;
          }
          case AUTH.SASLContinue:
            socket.write(encodeSaslResponse(await scram!.handleContinue(data)));
            break;
          case AUTH.SASLFinal:
            scram!.handleFinal(data);
            break;
          case AUTH.Ok:
            return { ok: true, mechanisms, mechanism: scram?.mechanism ?? '', done: scram?.done ?? false };
          default:
            throw new Error(`unexpected authentication request ${auth.code}`);
        }
      }
    } finally {
      socket.destroy();
    }
  }
});

/** Whole backend messages from a socket, one at a time. */
class Frames {
  #buf = Buffer.alloc(0);
  #wake: (() => void) | null = null;
  #closed = false;

  constructor(socket: net.Socket) {
    socket.on('data', (d: Buffer) => {
      this.#buf = Buffer.concat([this.#buf, d]);
      this.#wake?.();
    });
    const close = (): void => {
      this.#closed = true;
      this.#wake?.();
    };
    socket.on('close', close).on('error', close);
  }

  async next(): Promise<Buffer> {
    const deadline = Date.now() + 5_000;
    for (;;) {
      if (this.#buf.length >= 5) {
        const len = 1 + this.#buf.readInt32BE(1);
        if (this.#buf.length >= len) {
          const frame = this.#buf.subarray(0, len);
          this.#buf = this.#buf.subarray(len);
          return frame;
        }
      }
      if (this.#closed || Date.now() > deadline) throw new Error('connection closed or timed out before a complete message');
      await new Promise<void>((done) => {
        this.#wake = done;
        setTimeout(done, 100).unref();
      });
    }
  }
}
