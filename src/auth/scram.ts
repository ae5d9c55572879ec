// SCRAM-SHA-256 (RFC 5802, RFC 7677) in both roles, as PostgreSQL speaks it:
//   - verifiers in PostgreSQL's rolpassword format (parse, make, format);
//   - ScramServer: Postern authenticating a client against a verifier, with
//     PostgreSQL's checks and its mock exchange for unknown users;
//   - ScramClient: Postern logging into a server with a password or with raw
//     keys (SCRAM passthrough: the ClientKey a ScramServer recovered from the
//     client's proof plus the ServerKey of the verifier);
//   - tls-server-end-point channel binding data (RFC 5929).
// Pure state machines over the SASL payloads (the bytes inside
// SASLInitialResponse / SASLResponse / AuthenticationSASLContinue / Final),
// no sockets. Secrets never appear in error reasons.
// https://www.postgresql.org/docs/current/sasl-authentication.html

import { createHash, createHmac, pbkdf2, randomBytes, timingSafeEqual } from 'node:crypto';
import { PosternError } from '../errors.ts';
import { saslprep, saslprepBytes } from './saslprep.ts';

export const SCRAM_SHA_256 = 'SCRAM-SHA-256';
export const SCRAM_SHA_256_PLUS = 'SCRAM-SHA-256-PLUS';
/** The only channel binding type PostgreSQL implements. */
export const CBIND_TYPE = 'tls-server-end-point';

/** PostgreSQL's defaults: scram_iterations = 4096, SCRAM_DEFAULT_SALT_LEN = 16. */
export const DEFAULT_ITERATIONS = 4096;
export const DEFAULT_SALT_LENGTH = 16;
/** SCRAM_RAW_NONCE_LEN in PostgreSQL: 18 random bytes, base64 in the message. */
const RAW_NONCE_LENGTH = 18;
const KEY_LENGTH = 32;
/**
 * A server chooses the iteration count the client must run; a hostile or
 * misconfigured one must not be able to park a libuv thread for minutes.
 */
export const DEFAULT_MAX_ITERATIONS = 10_000_000;

export const SCRAM_ERROR = {
  /** Syntax of a SCRAM message (PostgreSQL: 08P01 "malformed SCRAM message"). */
  Malformed: 'malformed',
  /** A mechanism that was not offered or is unknown. */
  Mechanism: 'mechanism',
  /** Channel binding negotiation (downgrade, 'p' without TLS) or data mismatch. */
  ChannelBinding: 'channel-binding',
  /** Authorization identity or a mandatory extension (m=), which PostgreSQL rejects too. */
  Unsupported: 'unsupported',
  /** The final nonce differs from the combined one, or the server's lacks ours. */
  Nonce: 'nonce',
  /** Wrong password or unknown user: deliberately one kind for both. */
  AuthFailed: 'auth-failed',
  /** The server could not prove it knows the verifier. */
  ServerSignature: 'server-signature',
  /** The server sent e=... in its final message. */
  ServerError: 'server-error',
  /** Raw keys do not fit the salt or iteration count the server uses (passthrough impossible). */
  Keys: 'keys',
  /** Iteration count out of bounds. */
  Parameters: 'parameters',
  /** A method called out of order or after a failure. */
  State: 'state',
} as const;
export type ScramErrorKind = (typeof SCRAM_ERROR)[keyof typeof SCRAM_ERROR];

/**
 * A failed exchange. `reason` is for logs only: it never contains passwords,
 * keys or proofs, but may contain what the peer sent in clear text (nonces,
 * attribute names). Clients get a generic 28P01 from the caller.
 */
export class ScramError extends PosternError {
  readonly kind: ScramErrorKind;
  constructor(kind: ScramErrorKind, reason: string) {
    super(reason, 'ERR_SCRAM');
    this.name = 'ScramError';
    this.kind = kind;
  }
  get reason(): string {
    return this.message;
  }
}

// ---------------------------------------------------------------- primitives

function hmac(key: Buffer, data: Buffer | string): Buffer {
  return createHmac('sha256', key).update(data).digest();
}

function sha256(data: Buffer): Buffer {
  return createHash('sha256').update(data).digest();
}

function xor(a: Buffer, b: Buffer): Buffer {
  const out = Buffer.allocUnsafe(a.length);
  for (let i = 0; i < a.length; i++) out[i] = (a[i] as number) ^ (b[i] as number);
  return out;
}

/** Canonical base64 only: Buffer.from(s, 'base64') silently skips garbage. */
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

function decodeBase64(s: string): Buffer | null {
  return BASE64.test(s) ? Buffer.from(s, 'base64') : null;
}

/** RFC 5802 printable: 0x21-0x7E except ','. Nonces must consist of these. */
function isPrintable(s: string): boolean {
  if (s.length === 0) return false;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x21 || c > 0x7e || c === 0x2c) return false;
  }
  return true;
}

function randomNonce(): string {
  return randomBytes(RAW_NONCE_LENGTH).toString('base64');
}

/**
 * A SASL payload as a string with one character per byte, so that offsets and
 * slices map 1:1 to bytes and the AuthMessage is rebuilt byte-exactly (the
 * username attribute may carry any UTF-8, or invalid bytes).
 */
function bytesToText(data: Buffer, what: string): string {
  if (data.includes(0)) throw new ScramError(SCRAM_ERROR.Malformed, `${what} contains a NUL byte`);
  return data.toString('latin1');
}

/** Value of `a=value`, or a Malformed error naming what was expected. */
function attr(part: string | undefined, name: string, what: string): string {
  if (part === undefined || part.length < 2 || part.charCodeAt(0) !== name.charCodeAt(0) || part[1] !== '=') {
    throw new ScramError(SCRAM_ERROR.Malformed, `expected attribute "${name}" in ${what}`);
  }
  return part.slice(2);
}

/** Extensions may follow the mandatory attributes; each must still look like `x=...`. */
function checkExtensions(parts: string[], from: number, to: number, what: string): void {
  for (let i = from; i < to; i++) {
    if (!/^[A-Za-z]=/.test(parts[i] as string)) throw new ScramError(SCRAM_ERROR.Malformed, `malformed attribute in ${what}`);
  }
}

// ---------------------------------------------------------------- verifiers and keys

/** The contents of a PostgreSQL SCRAM-SHA-256 secret. */
export interface ScramVerifier {
  iterations: number;
  salt: Buffer;
  storedKey: Buffer;
  serverKey: Buffer;
}

/** ClientKey and ServerKey: what a login needs, derived once per (password, salt, iterations). */
export interface ScramKeys {
  clientKey: Buffer;
  serverKey: Buffer;
}

/**
 * Parses `SCRAM-SHA-256$<iter>:<salt b64>$<StoredKey b64>:<ServerKey b64>`
 * (pg_authid.rolpassword); null for anything else, including md5 hashes.
 */
export function parseVerifier(s: string): ScramVerifier | null {
  const m = /^SCRAM-SHA-256\$([1-9][0-9]{0,9}):([^$:]+)\$([^$:]+):([^$:]+)$/.exec(s);
  if (!m) return null;
  const iterations = Number(m[1]);
  if (iterations > 0x7fffffff) return null;
  const salt = decodeBase64(m[2] as string);
  const storedKey = decodeBase64(m[3] as string);
  const serverKey = decodeBase64(m[4] as string);
  if (!salt || salt.length === 0 || storedKey?.length !== KEY_LENGTH || serverKey?.length !== KEY_LENGTH) return null;
  return { iterations, salt, storedKey, serverKey };
}

export function formatVerifier(v: ScramVerifier): string {
  return `SCRAM-SHA-256$${v.iterations}:${v.salt.toString('base64')}$${v.storedKey.toString('base64')}:${v.serverKey.toString('base64')}`;
}

function pbkdf2Async(password: Buffer, salt: Buffer, iterations: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    pbkdf2(password, salt, iterations, KEY_LENGTH, 'sha256', (err, key) => (err ? reject(err) : resolve(key)));
  });
}

function prepared(password: string | Buffer): Buffer {
  return typeof password === 'string' ? Buffer.from(saslprep(password), 'utf8') : saslprepBytes(password);
}

/**
 * SaltedPassword = Hi(SASLprep(password), salt, i), computed on the libuv
 * thread pool. Callers may cache it (or the keys below) per (server, user,
 * salt, iterations): it is the expensive part of every login.
 */
export function saltedPassword(password: string | Buffer, salt: Buffer, iterations: number): Promise<Buffer> {
  return pbkdf2Async(prepared(password), salt, iterations);
}

export function keysFromSaltedPassword(salted: Buffer): ScramKeys {
  return { clientKey: hmac(salted, 'Client Key'), serverKey: hmac(salted, 'Server Key') };
}

export async function deriveKeys(password: string | Buffer, salt: Buffer, iterations: number): Promise<ScramKeys> {
  return keysFromSaltedPassword(await saltedPassword(password, salt, iterations));
}

export interface MakeVerifierOptions {
  iterations?: number;
  salt?: Buffer;
}

/** A verifier PostgreSQL accepts verbatim in `ALTER ROLE ... PASSWORD '<verifier>'`. */
export async function makeVerifier(password: string | Buffer, opts: MakeVerifierOptions = {}): Promise<ScramVerifier> {
  const iterations = opts.iterations ?? DEFAULT_ITERATIONS;
  if (!Number.isInteger(iterations) || iterations < 1 || iterations > 0x7fffffff) {
    throw new RangeError(`iterations must be an integer between 1 and 2^31-1, got ${iterations}`);
  }
  const salt = opts.salt ?? randomBytes(DEFAULT_SALT_LENGTH);
  if (salt.length === 0) throw new RangeError('salt must not be empty');
  const { clientKey, serverKey } = await deriveKeys(password, salt, iterations);
  return { iterations, salt, storedKey: sha256(clientKey), serverKey };
}

// ---------------------------------------------------------------- channel binding

/**
 * Hash of a certificate's signature algorithm, by OID. RFC 5929 section 4.1:
 * MD5 and SHA-1 are replaced by SHA-256; algorithms with no single hash
 * (RSASSA-PSS, Ed25519, Ed448) have no tls-server-end-point, and neither
 * PostgreSQL nor libpq can bind to such certificates.
 */
const SIGNATURE_HASH: ReadonlyMap<string, string> = new Map([
  ['1.2.840.113549.1.1.4', 'sha256'], // md5WithRSAEncryption
  ['1.2.840.113549.1.1.5', 'sha256'], // sha1WithRSAEncryption
  ['1.2.840.113549.1.1.14', 'sha224'], // sha224WithRSAEncryption
  ['1.2.840.113549.1.1.11', 'sha256'], // sha256WithRSAEncryption
  ['1.2.840.113549.1.1.12', 'sha384'], // sha384WithRSAEncryption
  ['1.2.840.113549.1.1.13', 'sha512'], // sha512WithRSAEncryption
  ['1.2.840.10045.4.1', 'sha256'], // ecdsa-with-SHA1
  ['1.2.840.10045.4.3.1', 'sha224'], // ecdsa-with-SHA224
  ['1.2.840.10045.4.3.2', 'sha256'], // ecdsa-with-SHA256
  ['1.2.840.10045.4.3.3', 'sha384'], // ecdsa-with-SHA384
  ['1.2.840.10045.4.3.4', 'sha512'], // ecdsa-with-SHA512
  ['1.2.840.10040.4.3', 'sha256'], // dsa-with-sha1
  ['2.16.840.1.101.3.4.3.1', 'sha224'], // dsa-with-sha224
  ['2.16.840.1.101.3.4.3.2', 'sha256'], // dsa-with-sha256
]);

/** One DER TLV at `pos`: content bounds, or null when it runs past `limit` or uses an unsupported length form. */
function derTlv(der: Buffer, pos: number, limit: number, tag: number): { start: number; end: number } | null {
  if (pos + 2 > limit || der[pos] !== tag) return null;
  let len = der[pos + 1] as number;
  let start = pos + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    // Certificates are far below 2^32 bytes; indefinite lengths are not DER.
    if (n === 0 || n > 4 || start + n > limit) return null;
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + (der[start + i] as number);
    start += n;
  }
  const end = start + len;
  return end <= limit ? { start, end } : null;
}

function oidToString(b: Buffer): string | null {
  const arcs: number[] = [];
  let v = 0;
  for (let i = 0; i < b.length; i++) {
    const byte = b[i] as number;
    v = v * 128 + (byte & 0x7f);
    if (v > Number.MAX_SAFE_INTEGER / 256) return null;
    if (!(byte & 0x80)) {
      if (arcs.length === 0) arcs.push(v < 80 ? Math.floor(v / 40) : 2, v < 80 ? v % 40 : v - 80);
      else arcs.push(v);
      v = 0;
    } else if (i === b.length - 1) {
      return null;
    }
  }
  return arcs.length > 0 ? arcs.join('.') : null;
}

/** The signatureAlgorithm OID of a DER X.509 certificate, or null if it cannot be found. */
export function certificateSignatureOid(der: Buffer): string | null {
  // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE, signatureAlgorithm SEQUENCE { OID, params }, signatureValue }
  const cert = derTlv(der, 0, der.length, 0x30);
  if (!cert) return null;
  const tbs = derTlv(der, cert.start, cert.end, 0x30);
  if (!tbs) return null;
  const alg = derTlv(der, tbs.end, cert.end, 0x30);
  if (!alg) return null;
  const oid = derTlv(der, alg.start, alg.end, 0x06);
  if (!oid) return null;
  return oidToString(der.subarray(oid.start, oid.end));
}

/**
 * tls-server-end-point channel binding data (RFC 5929 section 4.1): the hash
 * of the DER certificate with its signature's hash algorithm, MD5 and SHA-1
 * upgraded to SHA-256. Null when the certificate's algorithm has no such hash
 * (then SCRAM-SHA-256-PLUS must be neither offered nor chosen).
 */
export function tlsServerEndPoint(certDer: Buffer): Buffer | null {
  const oid = certificateSignatureOid(certDer);
  const hash = oid === null ? undefined : SIGNATURE_HASH.get(oid);
  if (hash === undefined) return null;
  return createHash(hash).update(certDer).digest();
}

// ---------------------------------------------------------------- server

/**
 * Per-process secret for mock salts. Several Postern processes behind one
 * address should share one (ScramServerOptions.mockSecret), or an unknown
 * user shows a different salt per process and is told apart from a real one.
 */
const PROCESS_MOCK_SECRET = mockSecretFromEnv() ?? randomBytes(32);

/** Worker processes of one instance share the secret their primary generated (src/cluster/primary.ts). */
function mockSecretFromEnv(): Buffer | null {
  const hex = process.env.POSTERN_MOCK_SECRET;
  return hex !== undefined && /^[0-9a-f]{64}$/.test(hex) ? Buffer.from(hex, 'hex') : null;
}

export interface ScramServerOptions {
  /**
   * The user's verifier, or null when the user is unknown or has no SCRAM
   * secret: the exchange then runs against a mock verifier and fails at the
   * proof check, exactly where and how a wrong password fails.
   */
  verifier: ScramVerifier | null;
  /** The user name from the StartupMessage; only used to derive the mock salt. */
  username: string;
  /**
   * tls-server-end-point data of the certificate Postern presented to this
   * client. Present means the client is on TLS and SCRAM-SHA-256-PLUS is
   * offered; absent means plaintext (or a certificate without a binding hash).
   */
  channelBinding?: Buffer | null;
  /** Secret mixed into mock salts; default: random per process. */
  mockSecret?: Buffer;
  /** Iteration count shown for unknown users; should equal what real verifiers use. */
  mockIterations?: number;
  /** Tests only: a fixed server nonce (printable, no ','). */
  serverNonce?: string;
}

const SERVER_STATE = {
  Initial: 'initial',
  FirstSent: 'first-sent',
  Done: 'done',
  Failed: 'failed',
} as const;
type ServerState = (typeof SERVER_STATE)[keyof typeof SERVER_STATE];

export type ScramServerFirst = { serverFirst: Buffer } | { error: ScramError };
export type ScramServerFinal = { serverFinal: Buffer; clientKey: Buffer } | { error: ScramError };

export class ScramServer {
  #verifier: ScramVerifier;
  /** True for the mock exchange: the proof check runs, then fails regardless. */
  #doomed: boolean;
  #cbindData: Buffer | null;
  #serverNonce: string;
  #state: ServerState = SERVER_STATE.Initial;
  #gs2Header = '';
  #clientFirstBare = '';
  #serverFirst = '';
  #clientNonce = '';
  /** Client nonce + server nonce, which the client-final-message must repeat. */
  #nonce = '';

  constructor(opts: ScramServerOptions) {
    this.#cbindData = opts.channelBinding ?? null;
    this.#serverNonce = opts.serverNonce ?? randomNonce();
    if (!isPrintable(this.#serverNonce)) throw new TypeError('server nonce must be printable and contain no comma');
    if (opts.verifier) {
      this.#verifier = opts.verifier;
      this.#doomed = false;
    } else {
      this.#verifier = mockVerifier(opts.username, opts.mockSecret ?? PROCESS_MOCK_SECRET, opts.mockIterations ?? DEFAULT_ITERATIONS);
      this.#doomed = true;
    }
  }

  /** For AuthenticationSASL, in PostgreSQL's order: the channel-binding variant first. */
  mechanisms(): string[] {
    return this.#cbindData ? [SCRAM_SHA_256_PLUS, SCRAM_SHA_256] : [SCRAM_SHA_256];
  }

  /** SASLInitialResponse: the selected mechanism and the client-first-message. */
  handleInitial(mechanism: string, data: Buffer): ScramServerFirst {
    if (this.#state !== SERVER_STATE.Initial) return this.#fail(SCRAM_ERROR.State, 'SASLInitialResponse received twice');
    try {
      this.#readClientFirst(mechanism, data);
    } catch (err) {
      return this.#failWith(err);
    }
    this.#nonce = this.#clientNonce + this.#serverNonce;
    const v = this.#verifier;
    this.#serverFirst = `r=${this.#nonce},s=${v.salt.toString('base64')},i=${v.iterations}`;
    this.#state = SERVER_STATE.FirstSent;
    return { serverFirst: Buffer.from(this.#serverFirst, 'latin1') };
  }

  #readClientFirst(mechanism: string, data: Buffer): void {
    let plus: boolean;
    if (mechanism === SCRAM_SHA_256) plus = false;
    else if (mechanism === SCRAM_SHA_256_PLUS && this.#cbindData) plus = true;
    else throw new ScramError(SCRAM_ERROR.Mechanism, `client selected an invalid SASL authentication mechanism "${printable(mechanism)}"`);

    const text = bytesToText(data, 'client-first-message');
    // gs2-header = gs2-cbind-flag "," [authzid] ","
    const c1 = text.indexOf(',');
    const c2 = c1 < 0 ? -1 : text.indexOf(',', c1 + 1);
    if (c2 < 0) throw new ScramError(SCRAM_ERROR.Malformed, 'client-first-message has no gs2 header');
    const flag = text.slice(0, c1);
    if (flag === 'n' || flag === 'y') {
      if (plus) throw new ScramError(SCRAM_ERROR.ChannelBinding, 'client selected SCRAM-SHA-256-PLUS but sent no channel binding');
      // 'y': the client can bind but believes we cannot. We offered PLUS, so
      // someone removed it from the list on the way: a downgrade attempt.
      if (flag === 'y' && this.#cbindData) {
        throw new ScramError(SCRAM_ERROR.ChannelBinding, 'client supports channel binding but thinks the server does not (downgrade)');
      }
    } else if (flag.startsWith('p=')) {
      if (!plus) throw new ScramError(SCRAM_ERROR.ChannelBinding, 'client sent channel binding without selecting SCRAM-SHA-256-PLUS');
      if (flag !== `p=${CBIND_TYPE}`) {
        throw new ScramError(SCRAM_ERROR.ChannelBinding, `unsupported channel binding type "${printable(flag.slice(2))}"`);
      }
    } else {
      throw new ScramError(SCRAM_ERROR.Malformed, 'unexpected channel-binding flag');
    }
    const authzid = text.slice(c1 + 1, c2);
    if (authzid.startsWith('a=')) throw new ScramError(SCRAM_ERROR.Unsupported, 'client uses an authorization identity (a=)');
    if (authzid !== '') throw new ScramError(SCRAM_ERROR.Malformed, 'unexpected attribute in gs2 header');
    this.#gs2Header = text.slice(0, c2 + 1);
    this.#clientFirstBare = text.slice(c2 + 1);

    const parts = this.#clientFirstBare.split(',');
    // RFC 5802 allows failing right away instead of sending e=extensions-not-supported later.
    if (parts[0]?.startsWith('m=')) throw new ScramError(SCRAM_ERROR.Unsupported, 'client requires an unsupported SCRAM extension (m=)');
    // The user name is ignored, as PostgreSQL ignores it: the StartupMessage's counts.
    attr(parts[0], 'n', 'client-first-message');
    const nonce = attr(parts[1], 'r', 'client-first-message');
    if (!isPrintable(nonce)) throw new ScramError(SCRAM_ERROR.Malformed, 'non-printable characters in SCRAM nonce');
    checkExtensions(parts, 2, parts.length, 'client-first-message');
    this.#clientNonce = nonce;
  }

  /** SASLResponse: the client-final-message. On success, send serverFinal in AuthenticationSASLFinal, then AuthenticationOk. */
  handleFinal(data: Buffer): ScramServerFinal {
    if (this.#state !== SERVER_STATE.FirstSent) return this.#fail(SCRAM_ERROR.State, 'SASLResponse received out of order');
    try {
      return this.#verifyClientFinal(data);
    } catch (err) {
      return this.#failWith(err);
    }
  }

  #verifyClientFinal(data: Buffer): ScramServerFinal {
    const text = bytesToText(data, 'client-final-message');
    const parts = text.split(',');
    const cbind = attr(parts[0], 'c', 'client-final-message');
    const nonce = attr(parts[1], 'r', 'client-final-message');
    const last = parts.length - 1;
    if (last < 2) throw new ScramError(SCRAM_ERROR.Malformed, 'client-final-message has no proof');
    const proofText = attr(parts[last], 'p', 'client-final-message');
    checkExtensions(parts, 2, last, 'client-final-message');

    // The binding input is the gs2 header repeated, plus the certificate hash for 'p'.
    const header = Buffer.from(this.#gs2Header, 'latin1');
    const expected = this.#gs2Header.startsWith('p=') && this.#cbindData ? Buffer.concat([header, this.#cbindData]) : header;
    if (cbind !== expected.toString('base64')) {
      throw new ScramError(SCRAM_ERROR.ChannelBinding, 'SCRAM channel binding check failed');
    }
    if (nonce !== this.#nonce) throw new ScramError(SCRAM_ERROR.Nonce, 'nonce in client-final-message does not match');
    const proof = decodeBase64(proofText);
    if (proof?.length !== KEY_LENGTH) throw new ScramError(SCRAM_ERROR.Malformed, 'malformed proof in client-final-message');

    const withoutProof = text.slice(0, text.length - parts[last]!.length - 1);
    const authMessage = Buffer.from(`${this.#clientFirstBare},${this.#serverFirst},${withoutProof}`, 'latin1');
    const v = this.#verifier;
    const clientKey = xor(proof, hmac(v.storedKey, authMessage));
    // Computed for unknown users too, so that timing does not tell them apart.
    const match = timingSafeEqual(sha256(clientKey), v.storedKey);
    if (this.#doomed) throw new ScramError(SCRAM_ERROR.AuthFailed, 'no valid SCRAM verifier for this user (mock exchange)');
    if (!match) throw new ScramError(SCRAM_ERROR.AuthFailed, 'client proof does not match the verifier');
    this.#state = SERVER_STATE.Done;
    const serverFinal = Buffer.from(`v=${hmac(v.serverKey, authMessage).toString('base64')}`, 'latin1');
    return { serverFinal, clientKey };
  }

  #fail(kind: ScramErrorKind, reason: string): { error: ScramError } {
    this.#state = SERVER_STATE.Failed;
    return { error: new ScramError(kind, reason) };
  }

  #failWith(err: unknown): { error: ScramError } {
    this.#state = SERVER_STATE.Failed;
    if (err instanceof ScramError) return { error: err };
    throw err;
  }
}

/**
 * What an unknown user's exchange runs against. Like PostgreSQL's
 * scram_mock_salt(): the salt is SHA-256(username || secret) cut to the usual
 * salt length, so it is stable for a name (a real user's salt is too) and
 * unpredictable without the secret. The keys are never matched.
 */
export function mockVerifier(username: string, secret: Buffer = PROCESS_MOCK_SECRET, iterations = DEFAULT_ITERATIONS): ScramVerifier {
  const salt = createHash('sha256').update(username, 'utf8').update(secret).digest().subarray(0, DEFAULT_SALT_LENGTH);
  return { iterations, salt, storedKey: Buffer.alloc(KEY_LENGTH), serverKey: Buffer.alloc(KEY_LENGTH) };
}

/** Peer-sent text made safe for a log line. */
function printable(s: string): string {
  const clean = s.replace(/[^\x20-\x7e]/g, '?');
  return clean.length > 64 ? `${clean.slice(0, 64)}...` : clean;
}

// ---------------------------------------------------------------- client

/** Lets callers keep derived keys across logins; a Map<string, ScramKeys> per (server, user) fits. */
export interface ScramKeyCache {
  get(key: string): ScramKeys | undefined;
  set(key: string, keys: ScramKeys): unknown;
}

/** The cache key for one (salt, iterations) pair of a server's verifier. */
export function scramCacheKey(salt: Buffer, iterations: number): string {
  return `${iterations}:${salt.toString('base64')}`;
}

/** Raw keys for SCRAM passthrough. */
export interface ScramRawKeys extends ScramKeys {
  /** If given, must be SHA-256(clientKey): catches a ClientKey recovered against another verifier. */
  storedKey?: Buffer;
  /** Salt and iteration count of the verifier the keys belong to: a server using others cannot accept them. */
  salt?: Buffer;
  iterations?: number;
}

interface ScramClientCommon {
  /** Sent as n=; PostgreSQL ignores it in favour of the StartupMessage user, and libpq sends it empty. */
  username?: string;
  /** The connection to the server is TLS (decides 'y' versus 'n'); implied by channelBinding. */
  tls?: boolean;
  /** tls-server-end-point data of the SERVER's certificate; enables SCRAM-SHA-256-PLUS. */
  channelBinding?: Buffer | null;
  /** Fail unless SCRAM-SHA-256-PLUS is used (libpq's channel_binding=require). */
  requireChannelBinding?: boolean;
  maxIterations?: number;
  /** Tests only: a fixed client nonce (printable, no ','). */
  clientNonce?: string;
}

export type ScramClientOptions = ScramClientCommon &
  ({ password: string | Buffer; cache?: ScramKeyCache; keys?: never } | { keys: ScramRawKeys; password?: never; cache?: never });

const CLIENT_STATE = {
  Initial: 'initial',
  Chosen: 'chosen',
  FirstSent: 'first-sent',
  FinalSent: 'final-sent',
  Done: 'done',
  Failed: 'failed',
} as const;
type ClientState = (typeof CLIENT_STATE)[keyof typeof CLIENT_STATE];

export class ScramClient {
  #opts: ScramClientOptions;
  #clientNonce: string;
  #cbindData: Buffer | null;
  #tls: boolean;
  #state: ClientState = CLIENT_STATE.Initial;
  #mechanism = '';
  #gs2Header = '';
  #clientFirstBare = '';
  #serverSignature: Buffer | null = null;
  #keys: ScramKeys | null = null;
  #warning: string | null = null;

  constructor(opts: ScramClientOptions) {
    this.#opts = opts;
    this.#clientNonce = opts.clientNonce ?? randomNonce();
    if (!isPrintable(this.#clientNonce)) throw new TypeError('client nonce must be printable and contain no comma');
    this.#cbindData = opts.channelBinding ?? null;
    this.#tls = opts.tls ?? this.#cbindData !== null;
    const k = opts.keys;
    if (k) {
      if (k.clientKey.length !== KEY_LENGTH || k.serverKey.length !== KEY_LENGTH) throw new TypeError('SCRAM keys must be 32 bytes');
      if (k.storedKey && !timingSafeEqualSafe(sha256(k.clientKey), k.storedKey)) {
        throw new ScramError(SCRAM_ERROR.Keys, 'ClientKey does not belong to the given StoredKey');
      }
    }
  }

  /** The mechanism used; null until chosen. */
  get mechanism(): string | null {
    return this.#mechanism === '' ? null : this.#mechanism;
  }

  /** Keys used for this login (derived or given), once handleContinue has run: cache them per (salt, iterations). */
  get keys(): ScramKeys | null {
    return this.#keys;
  }

  /** A non-fatal remark for logs, e.g. an iteration count below 4096. */
  get warning(): string | null {
    return this.#warning;
  }

  /**
   * True once the server proved it knows the verifier. Callers must not accept
   * AuthenticationOk before this: a server that skips SASLFinal is not verified.
   */
  get done(): boolean {
    return this.#state === CLIENT_STATE.Done;
  }

  /**
   * Picks from AuthenticationSASL's list, as libpq does: PLUS when the server
   * offers it and we have binding data; otherwise SCRAM-SHA-256 with 'y' on
   * TLS when PLUS was not offered (so a stripped PLUS is detected by the
   * server), or 'n'.
   */
  chooseMechanism(offered: readonly string[]): string {
    if (this.#state !== CLIENT_STATE.Initial) throw this.#fail(SCRAM_ERROR.State, 'mechanism already chosen');
    const plusOffered = offered.includes(SCRAM_SHA_256_PLUS);
    if (plusOffered && this.#cbindData) {
      this.#mechanism = SCRAM_SHA_256_PLUS;
      this.#gs2Header = `p=${CBIND_TYPE},,`;
    } else if (this.#opts.requireChannelBinding) {
      throw this.#fail(
        SCRAM_ERROR.ChannelBinding,
        plusOffered
          ? 'channel binding required but no binding data for the server certificate'
          : 'channel binding required but the server does not offer SCRAM-SHA-256-PLUS',
      );
    } else if (offered.includes(SCRAM_SHA_256)) {
      this.#mechanism = SCRAM_SHA_256;
      // 'y' when PLUS is offered would make the server suspect a downgrade.
      this.#gs2Header = this.#tls && !plusOffered ? 'y,,' : 'n,,';
    } else {
      throw this.#fail(SCRAM_ERROR.Mechanism, `none of the offered SASL mechanisms is supported: ${offered.map(printable).join(', ')}`);
    }
    this.#state = CLIENT_STATE.Chosen;
    return this.#mechanism;
  }

  /** The SASLInitialResponse payload. */
  initial(): { mechanism: string; data: Buffer } {
    if (this.#state !== CLIENT_STATE.Chosen) throw this.#fail(SCRAM_ERROR.State, 'initial() before chooseMechanism() or twice');
    // saslname escaping (RFC 5802 section 5.1); the name goes out as UTF-8.
    const user = (this.#opts.username ?? '').replace(/=/g, '=3D').replace(/,/g, '=2C');
    const bare = Buffer.from(`n=${user},r=${this.#clientNonce}`, 'utf8');
    // Kept one character per byte, like every message, for a byte-exact AuthMessage.
    this.#clientFirstBare = bare.toString('latin1');
    this.#state = CLIENT_STATE.FirstSent;
    return { mechanism: this.#mechanism, data: Buffer.concat([Buffer.from(this.#gs2Header, 'latin1'), bare]) };
  }

  /** AuthenticationSASLContinue's server-first-message in, the client-final-message out. */
  async handleContinue(serverFirst: Buffer): Promise<Buffer> {
    if (this.#state !== CLIENT_STATE.FirstSent) throw this.#fail(SCRAM_ERROR.State, 'server-first-message out of order');
    this.#state = CLIENT_STATE.FinalSent;
    try {
      return await this.#clientFinal(serverFirst);
    } catch (err) {
      this.#state = CLIENT_STATE.Failed;
      throw err;
    }
  }

  async #clientFinal(serverFirstBytes: Buffer): Promise<Buffer> {
    const serverFirst = bytesToText(serverFirstBytes, 'server-first-message');
    const parts = serverFirst.split(',');
    if (parts[0]?.startsWith('m=')) throw new ScramError(SCRAM_ERROR.Unsupported, 'server requires an unsupported SCRAM extension (m=)');
    const nonce = attr(parts[0], 'r', 'server-first-message');
    const saltText = attr(parts[1], 's', 'server-first-message');
    const iterText = attr(parts[2], 'i', 'server-first-message');
    checkExtensions(parts, 3, parts.length, 'server-first-message');
    // The server must extend our nonce: an echo, or someone else's, means replay or confusion.
    if (!nonce.startsWith(this.#clientNonce) || nonce.length === this.#clientNonce.length || !isPrintable(nonce)) {
      throw new ScramError(SCRAM_ERROR.Nonce, 'server nonce does not extend the client nonce');
    }
    const salt = decodeBase64(saltText);
    if (!salt || salt.length === 0) throw new ScramError(SCRAM_ERROR.Malformed, 'invalid salt in server-first-message');
    if (!/^[1-9][0-9]{0,9}$/.test(iterText)) throw new ScramError(SCRAM_ERROR.Malformed, 'invalid iteration count in server-first-message');
    const iterations = Number(iterText);
    const max = this.#opts.maxIterations ?? DEFAULT_MAX_ITERATIONS;
    if (iterations > max)
      throw new ScramError(SCRAM_ERROR.Parameters, `server asks for ${iterations} iterations, more than the limit of ${max}`);
    // PostgreSQL accepts any count from 1 (scram_iterations); below the RFC 7677 minimum is worth a log line.
    if (iterations < DEFAULT_ITERATIONS)
      this.#warning = `server uses only ${iterations} SCRAM iterations (RFC 7677 asks for at least 4096)`;

    const keys = await this.#keysFor(salt, iterations);
    this.#keys = keys;
    const cbindInput =
      this.#mechanism === SCRAM_SHA_256_PLUS && this.#cbindData
        ? Buffer.concat([Buffer.from(this.#gs2Header, 'latin1'), this.#cbindData])
        : Buffer.from(this.#gs2Header, 'latin1');
    const withoutProof = `c=${cbindInput.toString('base64')},r=${nonce}`;
    const authMessage = Buffer.from(`${this.#clientFirstBare},${serverFirst},${withoutProof}`, 'latin1');
    const proof = xor(keys.clientKey, hmac(sha256(keys.clientKey), authMessage));
    this.#serverSignature = hmac(keys.serverKey, authMessage);
    return Buffer.from(`${withoutProof},p=${proof.toString('base64')}`, 'latin1');
  }

  async #keysFor(salt: Buffer, iterations: number): Promise<ScramKeys> {
    const o = this.#opts;
    if (o.keys) {
      const k = o.keys;
      if ((k.salt && !k.salt.equals(salt)) || (k.iterations !== undefined && k.iterations !== iterations)) {
        throw new ScramError(SCRAM_ERROR.Keys, "the server's SCRAM salt or iteration count differs from the verifier the keys came from");
      }
      return { clientKey: k.clientKey, serverKey: k.serverKey };
    }
    const cacheKey = scramCacheKey(salt, iterations);
    const cached = o.cache?.get(cacheKey);
    if (cached) return cached;
    const keys = await deriveKeys(o.password as string | Buffer, salt, iterations);
    o.cache?.set(cacheKey, keys);
    return keys;
  }

  /** AuthenticationSASLFinal's server-final-message; throws unless the server signature verifies. */
  handleFinal(serverFinal: Buffer): void {
    if (this.#state !== CLIENT_STATE.FinalSent || !this.#serverSignature)
      throw this.#fail(SCRAM_ERROR.State, 'server-final-message out of order');
    try {
      const text = bytesToText(serverFinal, 'server-final-message');
      const parts = text.split(',');
      if (parts[0]?.startsWith('e='))
        throw new ScramError(SCRAM_ERROR.ServerError, `server reported a SCRAM error: ${printable(parts[0].slice(2))}`);
      const sig = decodeBase64(attr(parts[0], 'v', 'server-final-message'));
      checkExtensions(parts, 1, parts.length, 'server-final-message');
      if (!sig || !timingSafeEqualSafe(sig, this.#serverSignature)) {
        throw new ScramError(SCRAM_ERROR.ServerSignature, 'invalid server signature: the server does not know the verifier');
      }
    } catch (err) {
      this.#state = CLIENT_STATE.Failed;
      throw err;
    }
    this.#state = CLIENT_STATE.Done;
  }

  #fail(kind: ScramErrorKind, reason: string): ScramError {
    this.#state = CLIENT_STATE.Failed;
    return new ScramError(kind, reason);
  }
}

function timingSafeEqualSafe(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}
