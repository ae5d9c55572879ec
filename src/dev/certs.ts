// Throwaway TLS material for tests, the benchmark and `postern demo`: a root CA,
// server and client leaves, and optionally an intermediate CA with a chain file.
// Everything is produced by the `openssl` CLI at run time so no key is ever
// committed; EC P-256 keys keep generation in the tens of milliseconds.

import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

/** Absolute paths of a PEM certificate and its PEM private key. */
export interface CertPair {
  cert: string;
  key: string;
}

export interface CertSet {
  dir: string;
  /** Self-signed root CA. */
  ca: CertPair;
  /** Leaf signed by the root: serverAuth, SANs from `serverNames`. */
  server: CertPair;
  /** Leaf signed by the root: clientAuth, CN = `clientCN`. */
  client: CertPair;
  /**
   * Only with `withIntermediate`: an intermediate CA signed by the root, a
   * server leaf signed by the intermediate, and `chain` = leaf + intermediate
   * (the file a server loads so clients that only trust the root can verify).
   */
  intermediate?: { ca: CertPair; server: CertPair; chain: string };
}

export interface GenerateCertsOptions {
  serverNames?: string[];
  clientCN?: string;
  withIntermediate?: boolean;
  days?: number;
}

export interface IssueCertOptions {
  cn: string;
  sans?: string[];
  usage: 'server' | 'client';
  days?: number;
}

const DEFAULT_SERVER_NAMES = ['localhost', '127.0.0.1', '::1'] as const;
const DEFAULT_CLIENT_CN = 'postern-client';
const DEFAULT_DAYS = 30;

/**
 * Creates `dir` (if needed) and fills it with a fresh CA and leaves. Calling it
 * again on another directory yields an unrelated CA, which is what negative
 * tests ("certificate signed by someone else") need.
 */
export async function generateCerts(dir: string, opts: GenerateCertsOptions = {}): Promise<CertSet> {
  const root = resolve(dir);
  await mkdir(root, { recursive: true });
  const days = opts.days ?? DEFAULT_DAYS;
  const serverNames = opts.serverNames ?? [...DEFAULT_SERVER_NAMES];
  const serverCN = serverNames[0] ?? 'localhost';

  const ca = await createCA(join(root, 'ca'), 'Postern Test Root CA', days);
  const intermediateCA = opts.withIntermediate
    ? createCA(join(root, 'intermediate-ca'), 'Postern Test Intermediate CA', days, ca)
    : undefined;
  const [server, client, intermediate] = await Promise.all([
    issueCert(ca, join(root, 'server'), { cn: serverCN, sans: serverNames, usage: 'server', days }),
    issueCert(ca, join(root, 'client'), { cn: opts.clientCN ?? DEFAULT_CLIENT_CN, usage: 'client', days }),
    intermediateCA?.then(async (ica) => {
      const leaf = await issueCert(ica, join(root, 'intermediate-server'), {
        cn: serverCN,
        sans: serverNames,
        usage: 'server',
        days,
      });
      const chain = join(root, 'intermediate-chain.crt');
      const pems = await Promise.all([readFile(leaf.cert, 'utf8'), readFile(ica.cert, 'utf8')]);
      await writeFile(chain, pems.map(ensureTrailingNewline).join(''));
      return { ca: ica, server: leaf, chain };
    }),
  ]);

  const set: CertSet = { dir: root, ca, server, client };
  if (intermediate) set.intermediate = intermediate;
  return set;
}

/**
 * Issues a leaf signed by `ca`, written to `<outPrefix>.key` / `<outPrefix>.crt`.
 * Entries of `sans` that parse as IP addresses become IP SANs, the rest DNS SANs.
 */
export async function issueCert(ca: CertPair, outPrefix: string, opts: IssueCertOptions): Promise<CertPair> {
  const prefix = resolve(outPrefix);
  const pair: CertPair = { cert: `${prefix}.crt`, key: `${prefix}.key` };
  const keyUsage = 'critical, digitalSignature';
  const ext = [
    'basicConstraints = critical, CA:FALSE',
    `keyUsage = ${keyUsage}`,
    `extendedKeyUsage = ${opts.usage === 'server' ? 'serverAuth' : 'clientAuth'}`,
    'subjectKeyIdentifier = hash',
    'authorityKeyIdentifier = keyid, issuer',
  ];
  const sans = opts.sans ?? [];
  const altSection: string[] = [];
  if (sans.length > 0) {
    ext.push('subjectAltName = @alt');
    let dns = 0;
    let ip = 0;
    for (const name of sans) {
      // Node and libpq both match IP hosts only against IP SANs, never DNS SANs.
      if (isIP(name) !== 0) altSection.push(`IP.${++ip} = ${name}`);
      else altSection.push(`DNS.${++dns} = ${configValue(name)}`);
    }
  }
  await generateKey(pair.key);
  await signWithCA(pair, prefix, opts.cn, ca, opts.days ?? DEFAULT_DAYS, ext, altSection);
  return pair;
}

/** A root CA when `issuer` is absent, else an intermediate CA signed by `issuer`. */
async function createCA(prefix: string, cn: string, days: number, issuer?: CertPair): Promise<CertPair> {
  const pair: CertPair = { cert: `${prefix}.crt`, key: `${prefix}.key` };
  // libpq and OpenSSL reject an issuer without CA:TRUE and keyCertSign; pathlen:0
  // on the intermediate keeps it from signing further CAs.
  const ext = [
    `basicConstraints = critical, CA:TRUE${issuer ? ', pathlen:0' : ''}`,
    'keyUsage = critical, keyCertSign, cRLSign',
    'subjectKeyIdentifier = hash',
  ];
  await generateKey(pair.key);
  if (issuer) {
    ext.push('authorityKeyIdentifier = keyid, issuer');
    await signWithCA(pair, prefix, cn, issuer, days, ext, []);
    return pair;
  }
  ext.push('authorityKeyIdentifier = keyid:always');
  const cnf = `${prefix}.cnf`;
  // Our own config file instead of the system openssl.cnf, whose defaults
  // (and presence) vary between distributions and OpenSSL versions.
  await writeFile(cnf, requestConfig(cn, ext));
  try {
    await openssl([
      'req',
      '-x509',
      '-new',
      '-config',
      cnf,
      '-extensions',
      'ext',
      '-key',
      pair.key,
      '-sha256',
      '-days',
      String(days),
      '-set_serial',
      randomSerial(),
      '-out',
      pair.cert,
    ]);
  } finally {
    await rm(cnf, { force: true });
  }
  return pair;
}

/** CSR for `pair.key`, then signed by `ca` with exactly the extensions in `ext`. */
async function signWithCA(
  pair: CertPair,
  prefix: string,
  cn: string,
  ca: CertPair,
  days: number,
  ext: string[],
  altSection: string[],
): Promise<void> {
  const cnf = `${prefix}.cnf`;
  const csr = `${prefix}.csr`;
  let body = requestConfig(cn, ext);
  if (altSection.length > 0) body += `\n[alt]\n${altSection.join('\n')}\n`;
  await writeFile(cnf, body);
  try {
    await openssl(['req', '-new', '-config', cnf, '-key', pair.key, '-sha256', '-out', csr]);
    await openssl([
      'x509',
      '-req',
      '-in',
      csr,
      '-CA',
      ca.cert,
      '-CAkey',
      ca.key,
      // A random serial instead of -CAcreateserial: no .srl file to race on
      // when several leaves are issued by one CA concurrently.
      '-set_serial',
      randomSerial(),
      '-sha256',
      '-days',
      String(days),
      '-extfile',
      cnf,
      '-extensions',
      'ext',
      '-out',
      pair.cert,
    ]);
  } finally {
    await Promise.all([rm(cnf, { force: true }), rm(csr, { force: true })]);
  }
}

async function generateKey(path: string): Promise<void> {
  // The key comes back on stdout so that it is created with mode 0600 from the
  // first byte instead of being chmod-ed after openssl wrote it with the umask.
  const pem = await openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256']);
  await writeFile(path, pem, { mode: 0o600 });
  // `mode` only applies when the file is new; a rerun over an old dir must
  // still end up with a private key file (libpq refuses group/world access).
  await chmod(path, 0o600);
}

function requestConfig(cn: string, ext: string[]): string {
  return ['[req]', 'prompt = no', 'distinguished_name = dn', '[dn]', `CN = ${configValue(cn)}`, '[ext]', ...ext, ''].join('\n');
}

/** Escapes a value for an OpenSSL config file, where `$` expands variables and `#` starts a comment. */
function configValue(value: string): string {
  if (/[\r\n\0]/.test(value)) throw new Error(`certificate name must be a single line: ${JSON.stringify(value)}`);
  return value.replace(/[\\$#"']/g, (c) => `\\${c}`);
}

function randomSerial(): string {
  // Positive 63-bit serial: the top bit cleared keeps the DER INTEGER positive.
  const bytes = randomBytes(8);
  bytes[0] = (bytes[0] ?? 0) & 0x7f;
  return `0x${bytes.toString('hex')}`;
}

function ensureTrailingNewline(pem: string): string {
  return pem.endsWith('\n') ? pem : `${pem}\n`;
}

async function openssl(args: string[]): Promise<string> {
  try {
    const { stdout } = await execFileAsync('openssl', args, { encoding: 'utf8', maxBuffer: 1 << 20 });
    return stdout;
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT') {
      throw new Error('openssl not found on PATH; install it (Debian: apt-get install openssl)', { cause: err });
    }
    const detail = e.stderr?.trim() || e.message;
    throw new Error(`openssl ${args[0] ?? ''} failed: ${detail}`, { cause: err });
  }
}
