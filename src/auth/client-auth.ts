// Postern authenticating a client with a password-based method: builds the
// Authentication request, consumes the client's 'p' messages and decides.
// Socket-free: the session hands in frames and sends what comes back.
//
// Method semantics follow PostgreSQL (auth.c):
//   - scram-sha-256: SCRAM; SCRAM-SHA-256-PLUS is offered whenever the client
//     is on TLS. A user without a SCRAM secret fails like a wrong password.
//   - scram-sha-256-plus (Postern extension): SCRAM with channel binding required.
//   - md5: MD5 when the stored secret is an MD5 hash (or a password); SCRAM
//     when it is a SCRAM verifier, exactly as Postgres does.
//   - password: cleartext, checked against whatever is stored.
// Unknown users run the same exchange against a mock verifier and fail at the
// same step with the same error, so user names cannot be probed.

import { createHash, timingSafeEqual } from 'node:crypto';
import { encodeAuth, encodeAuthSasl } from '../protocol/backend.ts';
import { AUTH } from '../protocol/codes.ts';
import { Reader } from '../protocol/reader.ts';
import { md5Check, md5Salt, md5Verifier } from './md5.ts';
import { deriveKeys, mockVerifier, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramServer, type ScramVerifier } from './scram.ts';
import type { StoredSecret } from './secrets.ts';

export type PasswordMethod = 'scram-sha-256' | 'scram-sha-256-plus' | 'md5' | 'password';

export type AuthOutcome =
  | { kind: 'continue'; send: Buffer }
  | { kind: 'ok'; mechanism: string; scramKeys?: { clientKey: Buffer; serverKey: Buffer }; password?: string }
  | { kind: 'fail'; reason: string };

export interface ClientAuthOptions {
  method: PasswordMethod;
  user: string;
  /** null: unknown user (mock exchange). */
  secret: StoredSecret | null;
  /** tls-server-end-point data of Postern's certificate; null when the client is not on TLS. */
  channelBinding: Buffer | null;
}

export class ClientAuthExchange {
  #o: ClientAuthOptions;
  #scram: ScramServer | null = null;
  #md5Salt: Buffer | null = null;
  #kind: 'scram' | 'md5' | 'password';
  #verifier: ScramVerifier | null = null;
  #done = false;
  #sawInitial = false;
  #mech = '';
  #finalMessage: Buffer | null = null;

  constructor(o: ClientAuthOptions) {
    this.#o = o;
    const s = o.secret;
    if (o.method === 'password') this.#kind = 'password';
    else if (o.method === 'md5' && s !== null && s.kind !== 'scram') this.#kind = 'md5';
    else this.#kind = 'scram';
  }

  /** The mechanism family the exchange uses (for logs and counters). */
  get mechanism(): string {
    return this.#kind === 'scram' ? SCRAM_SHA_256 : this.#kind;
  }

  /** The first Authentication request to send. Async: a plaintext secret may need a verifier derived. */
  async start(): Promise<Buffer> {
    if (this.#kind === 'password') return encodeAuth(AUTH.CleartextPassword);
    if (this.#kind === 'md5') {
      this.#md5Salt = md5Salt();
      return encodeAuth(AUTH.MD5Password, this.#md5Salt);
    }
    const s = this.#o.secret;
    let verifier: ScramVerifier | null = null;
    if (s?.kind === 'scram') verifier = s.verifier;
    else if (s?.kind === 'password') {
      // A stored plaintext password: derive a verifier with a salt stable per user, as if it had been stored.
      const salt = createHash('sha256').update(`postern-salt:${this.#o.user}`).digest().subarray(0, 16);
      const k = await deriveKeys(s.password, salt, 4096);
      verifier = { iterations: 4096, salt, storedKey: createHash('sha256').update(k.clientKey).digest(), serverKey: k.serverKey };
    }
    this.#verifier = verifier;
    const cb = this.#o.channelBinding;
    this.#scram = new ScramServer({ verifier, username: this.#o.user, channelBinding: cb });
    const mechs = this.#o.method === 'scram-sha-256-plus' ? [SCRAM_SHA_256_PLUS] : this.#scram.mechanisms();
    return encodeAuthSasl(mechs);
  }

  /** Handles one complete 'p' frame from the client. */
  async onPassword(frame: Buffer, start: number, end: number): Promise<AuthOutcome> {
    if (this.#done) return { kind: 'fail', reason: 'unexpected password message' };
    const r = new Reader(frame, start + 5, end);
    if (this.#kind === 'password' || this.#kind === 'md5') {
      this.#done = true;
      const given = r.cstring();
      return this.#kind === 'password' ? this.#checkCleartext(given) : this.#checkMd5(given);
    }
    const scram = this.#scram as ScramServer;
    if (!this.#sawInitial) {
      this.#sawInitial = true;
      const mechanism = r.cstring();
      const len = r.int32();
      const data = len < 0 ? Buffer.alloc(0) : r.bytes(len);
      if (this.#o.method === 'scram-sha-256-plus' && mechanism !== SCRAM_SHA_256_PLUS) {
        this.#done = true;
        return { kind: 'fail', reason: 'channel binding is required by the matching rule' };
      }
      const res = scram.handleInitial(mechanism, data);
      if ('error' in res) {
        this.#done = true;
        return { kind: 'fail', reason: res.error.message };
      }
      this.#mech = mechanism;
      return { kind: 'continue', send: encodeAuth(AUTH.SASLContinue, res.serverFirst) };
    }
    this.#done = true;
    const res = scram.handleFinal(r.rest());
    if ('error' in res) return { kind: 'fail', reason: res.error.message };
    this.#finalMessage = encodeAuth(AUTH.SASLFinal, res.serverFinal);
    const v = this.#verifier as ScramVerifier;
    return { kind: 'ok', mechanism: this.#mech, scramKeys: { clientKey: res.clientKey, serverKey: v.serverKey } };
  }

  /** AuthenticationSASLFinal to send before AuthenticationOk (SCRAM only). */
  get finalMessage(): Buffer | null {
    return this.#finalMessage;
  }

  #checkCleartext(given: string): Promise<AuthOutcome> {
    return checkCleartextPassword(this.#o.user, this.#o.secret, given);
  }

  #checkMd5(given: string): AuthOutcome {
    const s = this.#o.secret;
    const salt = this.#md5Salt as Buffer;
    let stored: string;
    if (s?.kind === 'md5') stored = s.hash;
    else if (s?.kind === 'password') stored = md5Verifier(this.#o.user, s.password);
    else return { kind: 'fail', reason: 'unknown user' };
    return md5Check(stored, this.#o.user, salt, given) ? { kind: 'ok', mechanism: 'md5' } : { kind: 'fail', reason: 'wrong password' };
  }
}

/**
 * A cleartext password checked against a stored secret, whatever its kind: a
 * plaintext password or an MD5 hash compared in constant time, a SCRAM
 * verifier by deriving the keys from the password with its salt and
 * iterations. An unknown user (null) costs the same key derivation. Also the
 * dashboard's HTTP basic auth (admin/dashboard.ts).
 */
export async function checkCleartextPassword(user: string, secret: StoredSecret | null, given: string): Promise<AuthOutcome> {
  const s = secret;
  if (s === null) {
    // Same work as a real SCRAM check, so timing does not tell unknown users apart.
    await deriveKeys(given, mockVerifier(user).salt, 4096);
    return { kind: 'fail', reason: 'unknown user' };
  }
  if (s.kind === 'password') {
    const a = Buffer.from(given);
    const b = Buffer.from(s.password);
    const ok = a.length === b.length && timingSafeEqual(a, b);
    return ok ? { kind: 'ok', mechanism: 'password', password: given } : { kind: 'fail', reason: 'wrong password' };
  }
  if (s.kind === 'md5') {
    const a = Buffer.from(md5Verifier(user, given));
    const ok = a.length === s.hash.length && timingSafeEqual(a, Buffer.from(s.hash));
    return ok ? { kind: 'ok', mechanism: 'password', password: given } : { kind: 'fail', reason: 'wrong password' };
  }
  const k = await deriveKeys(given, s.verifier.salt, s.verifier.iterations);
  const stored = createHash('sha256').update(k.clientKey).digest();
  const ok = timingSafeEqual(stored, s.verifier.storedKey) && timingSafeEqual(k.serverKey, s.verifier.serverKey);
  return ok ? { kind: 'ok', mechanism: 'password', password: given, scramKeys: k } : { kind: 'fail', reason: 'wrong password' };
}
