#!/usr/bin/env node
// Opens N idle PostgreSQL sessions (optionally over TLS via SSLRequest) with raw
// sockets and holds them until stdin closes or SIGTERM. Runs in its own process
// so its memory and CPU never count as the proxy's. Speaks just enough of the
// protocol: StartupMessage, SCRAM-SHA-256 (the salted password is computed once
// per salt and cached, so 10,000 logins cost one PBKDF2), cleartext and MD5.
//
//   node idle-client.mjs --host H --port P --user U --db D --count N [--tls] [--batch 200]
//   password from env PGPASSWORD. Prints one JSON line when all attempts settled:
//   {"ready":N,"failed":M,"errors":[...],"seconds":S}; then holds the sessions.

import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string' },
    user: { type: 'string' },
    db: { type: 'string' },
    count: { type: 'string', default: '100' },
    batch: { type: 'string', default: '200' },
    tls: { type: 'boolean', default: false },
    timeout: { type: 'string', default: '30000' },
  },
});
const password = process.env.PGPASSWORD ?? '';
const count = Number(values.count);
const batch = Math.max(1, Number(values.batch));
const timeoutMs = Number(values.timeout);
const sockets = [];
const saltedCache = new Map();

function startupMessage(user, database) {
  const body = Buffer.from(`user\0${user}\0database\0${database}\0application_name\0bench-idle\0\0`);
  const b = Buffer.alloc(8 + body.length);
  b.writeInt32BE(b.length, 0);
  b.writeInt32BE(196608, 4);
  body.copy(b, 8);
  return b;
}

function frame(code, payload) {
  const b = Buffer.alloc(5 + payload.length);
  b[0] = code.charCodeAt(0);
  b.writeInt32BE(4 + payload.length, 1);
  payload.copy(b, 5);
  return b;
}

function cstr(s) {
  return Buffer.from(`${s}\0`);
}

const hmac = (key, text) => createHmac('sha256', key).update(text).digest();

function saltedPassword(salt, iterations) {
  const k = `${salt}:${iterations}`;
  let v = saltedCache.get(k);
  if (!v) {
    v = pbkdf2Sync(password.normalize('NFKC'), Buffer.from(salt, 'base64'), iterations, 32, 'sha256');
    saltedCache.set(k, v);
  }
  return v;
}

/** Negotiates TLS if asked; resolves the socket to speak the protocol on. */
function connect() {
  return new Promise((resolve, reject) => {
    const raw = net.connect({ host: values.host, port: Number(values.port), noDelay: true });
    raw.once('error', reject);
    raw.once('connect', () => {
      if (!values.tls) return resolve(raw);
      const req = Buffer.alloc(8);
      req.writeInt32BE(8, 0);
      req.writeInt32BE(80877103, 4);
      raw.write(req);
      raw.once('data', (d) => {
        if (d[0] !== 0x53) return reject(new Error(`server refused SSLRequest (${String.fromCharCode(d[0])})`));
        const s = tls.connect({ socket: raw, rejectUnauthorized: false, servername: undefined });
        s.once('error', reject);
        s.once('secureConnect', () => resolve(s));
      });
    });
  });
}

/** One session: connect, authenticate, wait for ReadyForQuery; then keep it open. */
async function openOne() {
  const sock = await connect();
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    let nonce;
    let clientFirstBare;
    let ready = false;
    const timer = setTimeout(() => fail(new Error('login timed out')), timeoutMs);
    const fail = (err) => {
      clearTimeout(timer);
      sock.destroy();
      reject(err);
    };
    sock.on('error', (err) => {
      if (!ready) fail(err);
    });
    sock.on('close', () => {
      if (!ready) fail(new Error('closed during login'));
    });
    sock.on('data', (d) => {
      if (ready) return; // idle: ParameterStatus/NoticeResponse later are ignored
      buf = buf.length === 0 ? d : Buffer.concat([buf, d]);
      while (buf.length >= 5) {
        const len = buf.readInt32BE(1);
        if (buf.length < 1 + len) break;
        const code = String.fromCharCode(buf[0]);
        const body = buf.subarray(5, 1 + len);
        buf = buf.subarray(1 + len);
        if (code === 'E') {
          const fields = body.toString('utf8').split('\0');
          return fail(
            new Error(
              fields
                .filter((f) => f.startsWith('M'))
                .map((f) => f.slice(1))
                .join(' ') || 'error',
            ),
          );
        }
        if (code === 'Z') {
          ready = true;
          clearTimeout(timer);
          buf = Buffer.alloc(0);
          return resolve(sock);
        }
        if (code !== 'R') continue; // S, K, N: not needed
        const kind = body.readInt32BE(0);
        if (kind === 0 || kind === 12) continue; // AuthenticationOk / SASLFinal
        if (kind === 3) {
          sock.write(frame('p', cstr(password)));
        } else if (kind === 5) {
          const salt = body.subarray(4, 8);
          const inner = createHash('md5')
            .update(password + values.user)
            .digest('hex');
          const outer = createHash('md5').update(inner).update(salt).digest('hex');
          sock.write(frame('p', cstr(`md5${outer}`)));
        } else if (kind === 10) {
          const mechs = body.subarray(4).toString('utf8').split('\0');
          if (!mechs.includes('SCRAM-SHA-256')) return fail(new Error(`no SCRAM-SHA-256 in ${mechs.join(',')}`));
          nonce = randomBytes(18).toString('base64');
          clientFirstBare = `n=*,r=${nonce}`;
          const first = Buffer.from(`n,,${clientFirstBare}`);
          const len4 = Buffer.alloc(4);
          len4.writeInt32BE(first.length, 0);
          sock.write(frame('p', Buffer.concat([cstr('SCRAM-SHA-256'), len4, first])));
        } else if (kind === 11) {
          const serverFirst = body.subarray(4).toString('utf8');
          const attrs = Object.fromEntries(serverFirst.split(',').map((kv) => [kv[0], kv.slice(2)]));
          if (!attrs.r?.startsWith(nonce)) return fail(new Error('SCRAM nonce mismatch'));
          const salted = saltedPassword(attrs.s, Number(attrs.i));
          const clientKey = hmac(salted, 'Client Key');
          const storedKey = createHash('sha256').update(clientKey).digest();
          const withoutProof = `c=biws,r=${attrs.r}`;
          const sig = hmac(storedKey, `${clientFirstBare},${serverFirst},${withoutProof}`);
          const proof = Buffer.alloc(32);
          for (let i = 0; i < 32; i++) proof[i] = clientKey[i] ^ sig[i];
          sock.write(frame('p', Buffer.from(`${withoutProof},p=${proof.toString('base64')}`)));
        } else {
          return fail(new Error(`unsupported authentication request ${kind}`));
        }
      }
    });
    sock.write(startupMessage(values.user, values.db));
  });
}

const errors = new Map();
let failed = 0;
const t0 = process.hrtime.bigint();
for (let done = 0; done < count; done += batch) {
  const n = Math.min(batch, count - done);
  const results = await Promise.allSettled(Array.from({ length: n }, () => openOne()));
  for (const r of results) {
    if (r.status === 'fulfilled') sockets.push(r.value);
    else {
      failed++;
      const m = String(r.reason?.message ?? r.reason);
      errors.set(m, (errors.get(m) ?? 0) + 1);
    }
  }
}
const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
process.stdout.write(
  `${JSON.stringify({ ready: sockets.length, failed, errors: [...errors].slice(0, 5).map(([m, n]) => `${m} (x${n})`), seconds })}\n`,
);

let closing = false;
function closeAll() {
  if (closing) return;
  closing = true;
  const terminate = frame('X', Buffer.alloc(0));
  for (const s of sockets) {
    try {
      s.end(terminate);
    } catch {
      // Already closed.
    }
  }
  setTimeout(() => process.exit(0), 2000).unref();
  let open = sockets.length;
  if (open === 0) process.exit(0);
  for (const s of sockets) {
    s.once('close', () => {
      if (--open === 0) process.exit(0);
    });
  }
}
process.on('SIGTERM', closeAll);
process.on('SIGINT', closeAll);
process.stdin.on('end', closeAll);
process.stdin.on('error', closeAll);
process.stdin.resume();
