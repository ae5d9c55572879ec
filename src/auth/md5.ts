// PostgreSQL's MD5 password authentication (AUTH.MD5Password): the stored
// verifier 'md5' + md5(password || username), the salted response
// 'md5' + md5(hex(md5(password || username)) || salt) a client sends, and the
// server-side check. Deprecated upstream (PostgreSQL 18 warns on md5
// passwords) but still what many servers and PgBouncer userlists use.
// https://www.postgresql.org/docs/current/auth-password.html
// https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-START-UP

import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';

const MD5_PREFIX = 'md5';
/** 'md5' + 32 lowercase hex digits, as in pg_authid.rolpassword. */
const MD5_VERIFIER = /^md5[0-9a-f]{32}$/;
const MD5_HEX = /^[0-9a-f]{32}$/;

function md5Hex(...parts: Array<string | Buffer>): string {
  const h = createHash('md5');
  // Strings go in as UTF-8, the bytes a UTF-8 client sends.
  for (const p of parts) h.update(p);
  return h.digest('hex');
}

/** True for a stored MD5 verifier ('md5' + 32 lowercase hex digits). */
export function isMd5Verifier(s: string): boolean {
  return MD5_VERIFIER.test(s);
}

/** The verifier PostgreSQL stores with password_encryption = md5: the user name is the salt. */
export function md5Verifier(user: string | Buffer, password: string | Buffer): string {
  return MD5_PREFIX + md5Hex(password, user);
}

/** What a login may hold for a user: the stored MD5 hash, or the password to derive it from. */
export interface Md5Secret {
  user: string | Buffer;
  password?: string | Buffer | undefined;
  /** The stored verifier ('md5' + hex) or its 32 hex digits; preferred over `password`. */
  md5?: string | undefined;
}

/**
 * The PasswordMessage payload answering AuthenticationMD5Password:
 * 'md5' + md5(inner || salt), where `hash` is the stored verifier (with or
 * without its 'md5' prefix), or a secret to take or derive it from. Knowing
 * the verifier is enough to log in: it is a password equivalent and must be
 * kept as secret as the password.
 */
export function md5Response(hash: string | Md5Secret, salt: Buffer): string {
  if (salt.length !== 4) throw new RangeError('MD5 salt must be 4 bytes');
  let verifier: string;
  if (typeof hash === 'string') verifier = hash;
  else if (hash.md5 !== undefined) verifier = hash.md5;
  else if (hash.password !== undefined) verifier = md5Verifier(hash.user, hash.password);
  else throw new TypeError('an MD5 response needs the password or its MD5 hash');
  const inner = verifier.startsWith(MD5_PREFIX) && verifier.length === 35 ? verifier.slice(3) : verifier;
  if (!MD5_HEX.test(inner)) throw new TypeError('not an MD5 password hash');
  return MD5_PREFIX + md5Hex(inner, salt);
}

/** The response computed from the clear-text password. */
export function md5ResponseFromPassword(user: string | Buffer, password: string | Buffer, salt: Buffer): string {
  return md5Response(md5Verifier(user, password), salt);
}

/**
 * Server side: does `clientResponse` (the PasswordMessage string, without its
 * NUL) answer `salt` for this user? `stored` is an MD5 verifier or, as a
 * PgBouncer userlist allows, a clear-text password. A SCRAM verifier cannot
 * answer an MD5 challenge and always fails here; use SCRAM for such users.
 */
export function md5Check(stored: string, user: string | Buffer, salt: Buffer, clientResponse: string | Buffer): boolean {
  if (stored.startsWith('SCRAM-SHA-256$')) return false;
  const verifier = isMd5Verifier(stored) ? stored : md5Verifier(user, stored);
  const expected = Buffer.from(md5Response(verifier, salt), 'latin1');
  const got = typeof clientResponse === 'string' ? Buffer.from(clientResponse, 'utf8') : clientResponse;
  // Lengths are public (always 35); only the contents are compared in constant time.
  return got.length === expected.length && timingSafeEqual(got, expected);
}

/** A fresh salt for AuthenticationMD5Password: one per attempt, so responses cannot be replayed. */
export function md5Salt(): Buffer {
  return randomBytes(4);
}
