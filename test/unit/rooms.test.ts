// The session's rooms without sockets (issue 12): the handshake driven by a
// fake socket, the login driven by a fake host, the pooled link's paths that
// need no server (the greeting of an already checked set of startup
// settings, a Parse answered without a server, a client that must wait).

import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { md5ResponseFromPassword, md5Verifier } from '../../src/auth/md5.ts';
import { loadAuthState } from '../../src/auth/store.ts';
import { validateConfig } from '../../src/config/load.ts';
import { Context } from '../../src/context.ts';
import { Handshake, type HandshakeHost, type Startup } from '../../src/frontend/handshake.ts';
import { Login, type LoginHost, type LoginResult } from '../../src/frontend/login.ts';
import { type LinkShell, PooledLink } from '../../src/frontend/pooled-link.ts';
import { StatementHook } from '../../src/frontend/statement-hook.ts';
import { createLogger } from '../../src/observability/log.ts';
import { decodeAuth } from '../../src/protocol/backend.ts';
import { AUTH, FE, PROTOCOL_3_0, VALID_FRONTEND } from '../../src/protocol/codes.ts';
import { MessageStream } from '../../src/protocol/framer.ts';
import { encodeParse, encodePassword, SYNC } from '../../src/protocol/frontend.ts';
import { encodeCancel, encodeStartup, GSSENC_REQUEST, SSL_REQUEST } from '../../src/protocol/startup.ts';
import { NEED } from '../../src/routing/hosts.ts';
import { poolFor, route } from '../../src/routing/router.ts';
import { parseMessages } from '../helpers/wire.ts';

let dir: string;

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'postern-rooms-'));
});
after(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function context(extra: Record<string, unknown> = {}): Context {
  const r = validateConfig(
    {
      listen: { host: '127.0.0.1', port: 0 },
      tls: { mode: 'disable' },
      databases: { appdb: { host: '127.0.0.1', port: 1, tls: { mode: 'disable' } } },
      log: { level: 'silent' },
      ...extra,
    },
    dir,
  );
  if (!r.ok) throw new Error(JSON.stringify(r.problems));
  const auth = loadAuthState(r.config);
  assert.deepEqual(auth.problems, []);
  return new Context(r.config, createLogger('silent'), null, auth.state);
}

/** Enough of a net.Socket for the rooms: what is written, and data pushed in. */
class FakeSocket extends EventEmitter {
  written: Buffer[] = [];
  destroyed = false;
  remoteAddress = '127.0.0.1';
  remotePort = 40000;
  write(b: Buffer | string): boolean {
    this.written.push(Buffer.from(b));
    return true;
  }
  pause(): this {
    return this;
  }
  resume(): this {
    return this;
  }
  destroy(): this {
    this.destroyed = true;
    return this;
  }
  receive(b: Buffer): void {
    this.emit('data', b);
  }
  get sent(): Buffer {
    return Buffer.concat(this.written);
  }
}

interface Recorded {
  fatal: Array<{ code: string; message: string }>;
  destroyed: number;
  startups: Startup[];
}

function handshake(ctx: Context): { sock: FakeSocket; rec: Recorded; h: Handshake } {
  const sock = new FakeSocket();
  const rec: Recorded = { fatal: [], destroyed: 0, startups: [] };
  const host: HandshakeHost = {
    ctx,
    log: ctx.log,
    debug() {},
    fatal: (code, message) => rec.fatal.push({ code, message }),
    destroy: () => rec.destroyed++,
    secured() {
      throw new Error('no TLS here');
    },
    startup: (s) => rec.startups.push(s),
    passthrough() {
      throw new Error('no passthrough here');
    },
  };
  return { sock, rec, h: new Handshake(host, sock as unknown as net.Socket) };
}

describe('handshake', () => {
  it('answers N to SSLRequest and GSSENCRequest without TLS, then hands on the startup', () => {
    const { sock, rec } = handshake(context());
    sock.receive(Buffer.from(GSSENC_REQUEST));
    sock.receive(Buffer.from(SSL_REQUEST));
    assert.equal(sock.sent.toString('latin1'), 'NN');
    sock.receive(
      encodeStartup(PROTOCOL_3_0, [
        ['user', 'app'],
        ['database', 'appdb'],
        ['application_name', 'x'],
      ]),
    );
    assert.equal(rec.startups.length, 1);
    assert.equal(rec.startups[0]?.user, 'app');
    assert.equal(rec.startups[0]?.database, 'appdb');
    assert.equal(rec.startups[0]?.params.get('application_name'), 'x');
    assert.deepEqual(rec.fatal, []);
  });

  it('gives the same startup whatever the chunking, and keeps bytes after it as early data', () => {
    const packet = Buffer.concat([encodeStartup(PROTOCOL_3_0, [['user', 'u']]), Buffer.from('Qrest')]);
    for (let cut = 1; cut < packet.length - 5; cut++) {
      const { sock, rec } = handshake(context());
      sock.receive(packet.subarray(0, cut));
      sock.receive(packet.subarray(cut));
      assert.equal(rec.startups.length, 1, `cut at ${cut}`);
      assert.equal(rec.startups[0]?.database, 'u', 'database defaults to the user');
      assert.equal(rec.startups[0]?.early.toString('latin1'), 'Qrest');
    }
  });

  it('refuses bytes piggybacked on an SSLRequest, a second SSLRequest, other protocol versions and a missing user', () => {
    let t = handshake(context());
    t.sock.receive(Buffer.concat([Buffer.from(SSL_REQUEST), Buffer.from('Q')]));
    assert.equal(t.rec.fatal[0]?.code, '08P01');
    assert.match(t.rec.fatal[0]?.message ?? '', /unencrypted data after SSL request/);
    t = handshake(context());
    t.sock.receive(Buffer.from(SSL_REQUEST));
    t.sock.receive(Buffer.from(SSL_REQUEST));
    assert.equal(t.rec.fatal[0]?.code, '08P01');
    t = handshake(context());
    t.sock.receive(encodeStartup((4 << 16) | 0, [['user', 'u']]));
    assert.equal(t.rec.fatal[0]?.code, '0A000');
    t = handshake(context());
    t.sock.receive(encodeStartup(PROTOCOL_3_0, [['database', 'd']]));
    assert.equal(t.rec.fatal[0]?.code, '28000');
  });

  it('closes quietly on a bad startup length and on a CancelRequest (counted, never answered)', () => {
    const ctx = context();
    let t = handshake(ctx);
    const bad = Buffer.alloc(8);
    bad.writeInt32BE(4, 0);
    t.sock.receive(bad);
    assert.equal(t.rec.destroyed, 1);
    assert.equal(t.sock.sent.length, 0);
    assert.equal(ctx.stats.violations.get('client/startup_bad_length'), 1);
    t = handshake(ctx);
    t.sock.receive(encodeCancel(1234, Buffer.from([1, 2, 3, 4])));
    assert.equal(t.rec.destroyed, 1);
    assert.equal(t.sock.sent.length, 0);
    assert.equal(ctx.stats.cancels.get('unknown'), 1);
  });

  it('a direct-TLS ClientHello without TLS configured is closed quietly', () => {
    const { sock, rec } = handshake(context());
    sock.receive(Buffer.from([0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5]));
    assert.equal(rec.destroyed, 1);
    assert.equal(sock.sent.length, 0);
  });
});

function startup(sock: FakeSocket, user: string, database: string): Startup {
  return {
    socket: sock as unknown as net.Socket,
    tls: null,
    minor: 0,
    params: new Map([
      ['user', user],
      ['database', database],
    ]),
    user,
    database,
    tenant: null,
    early: Buffer.alloc(0),
  };
}

function login(ctx: Context, user: string, database: string, overLimit = false) {
  const sock = new FakeSocket();
  const rec = { fatal: [] as Array<{ code: string; message: string }>, sent: [] as Buffer[], done: [] as LoginResult[] };
  const host: LoginHost = {
    ctx,
    log: ctx.log,
    debug() {},
    send: (b) => rec.sent.push(Buffer.from(b)),
    fatal: (code, message) => rec.fatal.push({ code, message }),
    closed: () => rec.fatal.length > 0,
    outcome() {},
    negotiated() {},
    done: (r) => rec.done.push(r),
  };
  return { l: new Login(host, startup(sock, user, database), overLimit), rec };
}

describe('login', () => {
  it('without hba rules: relayed to the server', async () => {
    const { l, rec } = login(context(), 'app', 'appdb');
    await l.start();
    assert.deepEqual(rec.done, [{ kind: 'relay' }]);
  });

  it('checks before authenticating: the client limit, an unknown database, the admin console user list', async () => {
    let t = login(context(), 'app', 'appdb', true);
    await t.l.start();
    assert.equal(t.rec.fatal[0]?.code, '53300');
    t = login(context(), 'app', 'nosuch');
    await t.l.start();
    assert.equal(t.rec.fatal[0]?.code, '3D000');
    t = login(context({ admin: { users: ['root'] } }), 'app', 'postern');
    await t.l.start();
    assert.equal(t.rec.fatal[0]?.code, '28000');
  });

  it('hba trust and reject', async () => {
    writeFileSync(join(dir, 'hba-trust.conf'), 'host all reject_me 127.0.0.1/32 reject\nhost all all 127.0.0.1/32 trust\n');
    const ctx = context({ auth: { hba_file: join(dir, 'hba-trust.conf') } });
    let t = login(ctx, 'app', 'appdb');
    await t.l.start();
    assert.equal(t.rec.done[0]?.kind, 'pooled');
    assert.equal(t.l.method, 'trust');
    t = login(ctx, 'reject_me', 'appdb');
    await t.l.start();
    assert.equal(t.rec.fatal[0]?.code, '28000');
  });

  it('md5 against the users file: the right answer logs in (the hash is kept for the server), a wrong one gets 28P01', async () => {
    writeFileSync(join(dir, 'hba-md5.conf'), 'host all all 127.0.0.1/32 md5\n');
    writeFileSync(join(dir, 'users-md5.txt'), `"app" "${md5Verifier('app', 'sekrit')}"\n`);
    const ctx = context({ auth: { hba_file: join(dir, 'hba-md5.conf'), users_file: join(dir, 'users-md5.txt') } });
    for (const [password, ok] of [
      ['sekrit', true],
      ['wrong', false],
    ] as const) {
      const t = login(ctx, 'app', 'appdb');
      await t.l.start();
      const req = decodeAuth(t.rec.sent[0] as Buffer);
      assert.equal(req.code, AUTH.MD5Password);
      const answer = encodePassword(md5ResponseFromPassword('app', password, req.data));
      t.l.onFrame(FE.Password, answer, 0, answer.length);
      await new Promise((r) => setImmediate(r));
      if (ok) {
        const r = t.rec.done[0];
        assert.equal(r?.kind, 'pooled');
        assert.equal(r?.kind === 'pooled' ? r.creds.stored?.kind : null, 'md5');
      } else assert.equal(t.rec.fatal[0]?.code, '28P01');
    }
  });

  it('anything but a password message during authentication is a protocol violation', async () => {
    writeFileSync(join(dir, 'hba-md5b.conf'), 'host all all 127.0.0.1/32 md5\n');
    const t = login(context({ auth: { hba_file: join(dir, 'hba-md5b.conf') } }), 'app', 'appdb');
    await t.l.start();
    const q = Buffer.from([0x51, 0, 0, 0, 5, 0]);
    t.l.onFrame(FE.Query, q, 0, q.length);
    assert.equal(t.rec.fatal[0]?.code, '08P01');
  });
});

describe('pooled link, the paths without a server', () => {
  function link(ctx: Context, settings: Map<string, string>) {
    const sent: Buffer[] = [];
    const greeted: Array<ReadonlyMap<string, string>> = [];
    const fatal: string[] = [];
    const stream = new MessageStream({ onRun() {}, onMessage() {}, onViolation() {} }, VALID_FRONTEND, VALID_FRONTEND, 1 << 20);
    const statements = new StatementHook({
      ctx,
      id: 1,
      database: 'appdb',
      user: 'app',
      applicationName: '',
      traffic: () => null,
      cycled() {},
    });
    const r = route(ctx, 'appdb', 'app');
    assert.ok(r !== null);
    const group = poolFor(ctx, { ...r, mode: 'transaction', poolSize: 2 }, {});
    const pool = group.choose(NEED.Any);
    assert.ok(pool !== null);
    const shell: LinkShell = {
      id: 1,
      ctx,
      database: 'appdb',
      user: 'app',
      stream,
      statements,
      traffic: ctx.stats.traffic('appdb', 'app'),
      logFor: () => ctx.log,
      send: (b) => sent.push(Buffer.from(b)),
      toClient: () => true,
      clientChunk: () => false,
      flushClient() {},
      pauseClient() {},
      resumeClient() {},
      greet: (p) => greeted.push(p),
      fatal: (code) => fatal.push(code),
      terminate: (code) => fatal.push(code),
      destroy() {},
      close() {},
      internalError: (e) => {
        throw e;
      },
      countError() {},
      countViolation() {},
    };
    return { l: new PooledLink(shell, group, 'transaction', settings), pool, sent, greeted, fatal };
  }

  it('a set of startup settings the pool already checked is greeted at once, with the server spelling', () => {
    const ctx = context();
    const t = link(ctx, new Map([['datestyle', 'iso, dmy']]));
    t.pool.welcome = new Map([
      ['DateStyle', 'ISO, MDY'],
      ['application_name', ''],
      ['server_version', '15.0'],
    ]);
    t.pool.validated.set('datestyle\u0000iso, dmy', new Map([['datestyle', 'ISO, DMY']]));
    t.l.start();
    assert.equal(t.greeted.length, 1);
    assert.equal(t.greeted[0]?.get('DateStyle'), 'ISO, DMY');
    assert.equal(t.greeted[0]?.get('server_version'), '15.0');
    assert.equal(t.l.settings.reported.get('datestyle'), 'ISO, DMY');
    assert.equal(t.l.waiting, false, 'no server needed');
  });

  it('a Parse of a statement the pool knows, with a Sync, is answered without a server; an unknown one waits for a server', () => {
    const ctx = context();
    ctx.pools.pause('appdb'); // nothing is opened: a client that needs a server waits
    const t = link(ctx, new Map());
    t.pool.welcome = new Map([['application_name', '']]);
    t.pool.validated.set('', new Map());
    t.l.start();
    const known = encodeParse('s1', 'select 1');
    const entry = ctx.statements.intern(known, known.indexOf(0, 5) + 1, known.length);
    entry.ref();
    entry.parsedIn.add(t.pool);
    t.l.onClientChunk(Buffer.concat([known, SYNC]));
    const answered = parseMessages(Buffer.concat(t.sent)).messages.map((m) => m.type);
    assert.deepEqual(answered, ['1', 'Z']);
    assert.equal(t.l.waiting, false);
    assert.equal(t.l.preparedStatements, 1);
    t.l.onClientChunk(Buffer.concat([encodeParse('s2', 'select 2'), SYNC]));
    assert.equal(t.l.waiting, true, 'a statement no server of the pool accepted yet needs a server');
    assert.equal(t.pool.counts().cl_waiting, 1);
    t.l.close();
    assert.equal(t.pool.counts().cl_waiting, 0, 'a closed client leaves the queue');
  });
});
