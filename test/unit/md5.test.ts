// MD5 password authentication (src/auth/md5.ts): known vectors (RFC 1321's
// md5("abc"), and values computed independently with `openssl dgst -md5`),
// the server-side check, and against a real PostgreSQL: the verifier equals
// what the server stores, and md5Response logs in over a raw socket.

import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { isMd5Verifier, md5Check, md5Response, md5ResponseFromPassword, md5Salt, md5Verifier } from '../../src/auth/md5.ts';
import { type PgCluster, startPostgres } from '../../src/dev/cluster.ts';
import { decodeAuth, decodeNotice } from '../../src/protocol/backend.ts';
import { AUTH, PROTOCOL_3_0 } from '../../src/protocol/codes.ts';
import { encodePassword } from '../../src/protocol/frontend.ts';
import { encodeStartup } from '../../src/protocol/startup.ts';

const SALT = Buffer.from([1, 2, 3, 4]);
// printf 'secretalice' | openssl dgst -md5
const ALICE_VERIFIER = 'md54a0a68b43b6cd5cf266fa02f196e2371';
// printf '4a0a68b43b6cd5cf266fa02f196e2371\x01\x02\x03\x04' | openssl dgst -md5
const ALICE_RESPONSE = 'md598a0412b9c31436fc53776e863350083';

describe('md5 vectors', () => {
  it('md5Verifier is md5(password || user)', () => {
    assert.equal(md5Verifier('bc', 'a'), 'md5900150983cd24fb0d6963f7d28e17f72'); // RFC 1321: md5("abc")
    assert.equal(md5Verifier('alice', 'secret'), ALICE_VERIFIER);
    // Non-ASCII goes in as UTF-8 (printf 'pässwördbjörn' | openssl dgst -md5 in a UTF-8 shell).
    assert.equal(md5Verifier('björn', 'pässwörd'), 'md551d0eb0454667a6af5341dc2a7e09b5c');
    assert.equal(md5Verifier(Buffer.from('alice'), Buffer.from('secret')), ALICE_VERIFIER);
  });

  it('md5Response hashes the hex digits and the salt', () => {
    assert.equal(md5Response(ALICE_VERIFIER, SALT), ALICE_RESPONSE);
    assert.equal(md5Response(ALICE_VERIFIER.slice(3), SALT), ALICE_RESPONSE);
    assert.equal(md5Response({ user: 'alice', password: 'secret' }, SALT), ALICE_RESPONSE);
    assert.equal(md5Response({ user: 'alice', md5: ALICE_VERIFIER, password: 'ignored' }, SALT), ALICE_RESPONSE);
    assert.equal(md5ResponseFromPassword('alice', 'secret', SALT), ALICE_RESPONSE);
    assert.notEqual(md5Response(ALICE_VERIFIER, Buffer.from([1, 2, 3, 5])), ALICE_RESPONSE);
  });

  it('md5Response refuses what is not an MD5 hash or salt', () => {
    assert.throws(() => md5Response('SCRAM-SHA-256$4096:abc$def:ghi', SALT), TypeError);
    assert.throws(() => md5Response(ALICE_VERIFIER.toUpperCase(), SALT), TypeError);
    assert.throws(() => md5Response({ user: 'alice' }, SALT), TypeError);
    assert.throws(() => md5Response(ALICE_VERIFIER, Buffer.alloc(3)), RangeError);
  });

  it('md5Check accepts the right response only', () => {
    assert.equal(md5Check(ALICE_VERIFIER, 'alice', SALT, ALICE_RESPONSE), true);
    assert.equal(md5Check(ALICE_VERIFIER, 'alice', SALT, Buffer.from(ALICE_RESPONSE)), true);
    // A clear-text stored password (PgBouncer userlist style) is hashed with the user name.
    assert.equal(md5Check('secret', 'alice', SALT, ALICE_RESPONSE), true);
    assert.equal(md5Check('secret', 'bob', SALT, ALICE_RESPONSE), false);
    assert.equal(md5Check(ALICE_VERIFIER, 'alice', Buffer.from([9, 9, 9, 9]), ALICE_RESPONSE), false);
    assert.equal(md5Check(ALICE_VERIFIER, 'alice', SALT, ALICE_RESPONSE.slice(0, -1)), false);
    assert.equal(md5Check(ALICE_VERIFIER, 'alice', SALT, `${ALICE_RESPONSE}0`), false);
    assert.equal(md5Check(ALICE_VERIFIER, 'alice', SALT, ''), false);
    // A SCRAM verifier cannot answer an MD5 challenge (and must not be taken for a clear-text password).
    assert.equal(
      md5Check('SCRAM-SHA-256$4096:c2FsdA==$a:b', 'alice', SALT, md5ResponseFromPassword('alice', 'SCRAM-SHA-256$4096:c2FsdA==$a:b', SALT)),
      false,
    );
  });

  it('md5Salt is 4 random bytes; isMd5Verifier recognises stored hashes', () => {
    const a = md5Salt();
    assert.equal(a.length, 4);
    // Two equal draws happen once in 2^32.
    assert.notDeepEqual(md5Salt(), a);
    assert.equal(isMd5Verifier(ALICE_VERIFIER), true);
    assert.equal(isMd5Verifier('md5'), false);
    assert.equal(isMd5Verifier(ALICE_VERIFIER.toUpperCase()), false);
  });
});

describe('md5 against a real PostgreSQL', () => {
  let cluster: PgCluster | undefined;

  before(async () => {
    cluster = await startPostgres({ auth: 'md5', users: [{ name: 'dave', password: 'initial' }] });
    await cluster.psql("SET password_encryption = 'md5'; ALTER ROLE dave PASSWORD 'x'");
  });

  after(async () => {
    await cluster?.stop();
  });

  it('md5Verifier equals the hash PostgreSQL stores', async () => {
    const stored = await cluster!.psql("select rolpassword from pg_authid where rolname = 'dave'");
    assert.equal(stored, md5Verifier('dave', 'x'));
  });

  it('md5Response logs in; a wrong one is refused', async () => {
    assert.deepEqual(await md5Login(cluster!.port, 'dave', md5Verifier('dave', 'x')), { ok: true });
    assert.deepEqual(await md5Login(cluster!.port, 'dave', md5Verifier('dave', 'y')), { ok: false, code: '28P01' });
  });
});

/** StartupMessage, answer AuthenticationMD5Password with md5Response(hash, salt), report the outcome. */
async function md5Login(port: number, user: string, hash: string): Promise<{ ok: true } | { ok: false; code: string | undefined }> {
  const socket = net.connect({ host: '127.0.0.1', port });
  let buf = Buffer.alloc(0);
  let wake: (() => void) | null = null;
  socket.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    wake?.();
  });
  socket.on('error', () => wake?.());
  const next = async (): Promise<Buffer> => {
    const deadline = Date.now() + 5_000;
    for (;;) {
      if (buf.length >= 5 && buf.length >= 1 + buf.readInt32BE(1)) {
        const frame = buf.subarray(0, 1 + buf.readInt32BE(1));
        buf = buf.subarray(frame.length);
        return frame;
      }
      if (Date.now() > deadline || socket.destroyed) throw new Error('no message from server');
      await new Promise<void>((done) => {
        wake = done;
        setTimeout(done, 100).unref();
      });
    }
  };
  try {
    socket.write(
      encodeStartup(PROTOCOL_3_0, [
        ['user', user],
        ['database', 'postgres'],
      ]),
    );
    const req = decodeAuth(await next());
    assert.equal(req.code, AUTH.MD5Password);
    socket.write(encodePassword(md5Response(hash, Buffer.from(req.data))));
    const reply = await next();
    if (reply[0] === 0x45) return { ok: false, code: decodeNotice(reply).code };
    assert.equal(decodeAuth(reply).code, AUTH.Ok);
    return { ok: true };
  } finally {
    socket.destroy();
  }
}
