// Several Postern instances behind one TCP load balancer (cluster.*): a
// CancelRequest opens a new connection, so the balancer may hand it to an
// instance that does not hold the session. That instance forwards it to the
// owner without any shared state: with cluster.instance_id set, every pid
// this instance issues carries its number in the top 8 bits, and cluster.peers
// says where each number listens; without it (or for a number no entry
// names), the request goes to every address of cluster.peers_dns.
//
// A forwarded request is a PeerCancel packet on the peer's client port:
// instance, pid, the sender's clock and the client's key, with an
// HMAC-SHA256 under cluster.secret. The receiver checks the MAC, the clock
// (within MAX_SKEW_S), that it has not seen the same packet before, and
// that it is the instance named; only then does it look the key up, exactly
// as for a client's own CancelRequest. A forwarded request is never
// forwarded again, so two instances cannot bounce one between them.

import { createHmac, timingSafeEqual } from 'node:crypto';
import { lookup } from 'node:dns/promises';
import { connect } from 'node:net';
import type { ClusterConfig } from '../config/schema.ts';
import { splitHostPort } from '../config/units.ts';
import { type Instances, PID_BITS } from '../context.ts';
import type { Logger } from '../observability/log.ts';
import { encodePeerCancel, type PeerCancelPacket, peerCancelBody } from '../protocol/startup.ts';

/** A forwarded cancel older or newer than this (seconds) is refused: clocks of peers must roughly agree. */
export const MAX_SKEW_S = 30;
/** How long a forwarded connection may take to open and send. */
const SEND_TIMEOUT_MS = 2000;
/** Seen packets kept for replay checks (bounded: the oldest go first). */
const MAX_SEEN = 10_000;

/** The instance number a pid names, when the pid came from an instance with cluster.instance_id. */
export function instanceOfPid(pid: number): number {
  return pid >>> PID_BITS;
}

export class InstancePeers implements Instances {
  readonly id: number | null;
  readonly #config: () => ClusterConfig;
  readonly #log: Logger;
  /** MAC (hex) -> when it stops mattering (ms): a replayed packet inside the clock window is refused. */
  readonly #seen = new Map<string, number>();

  /** `config` is read at each use, so a reload of peers, DNS name or secret applies to the next cancel. */
  constructor(id: number | null, config: () => ClusterConfig, log: Logger) {
    this.id = id;
    this.#config = config;
    this.#log = log;
  }

  remote(pid: number): boolean {
    return this.id === null || instanceOfPid(pid) !== this.id;
  }

  forward(pid: number, key: Buffer): void {
    const c = this.#config();
    if (c.secret === undefined) return;
    const target = this.id === null ? null : instanceOfPid(pid);
    const body = peerCancelBody(target ?? -1, pid, Math.floor(Date.now() / 1000), key);
    const packet = encodePeerCancel(body, mac(c.secret, body));
    const peer = target === null ? undefined : c.peers.find((p) => p.id === target && p.id !== this.id);
    if (peer !== undefined) {
      this.#send(peer.host, peer.port, packet);
      return;
    }
    if (c.peers_dns === undefined) {
      this.#log.debug({ instance: target }, 'cancel request for an instance no peer entry names; dropped');
      return;
    }
    const { host: name, port } = splitHostPort(c.peers_dns);
    lookup(name, { all: true }).then(
      (addrs) => {
        for (const a of addrs) this.#send(a.address, port, packet);
      },
      (err: NodeJS.ErrnoException) => {
        this.#log.warn({ name, err: err.code ?? err.message }, 'cluster.peers_dns does not resolve; cancel request dropped');
      },
    );
  }

  #send(host: string, port: number, packet: Buffer): void {
    const sock = connect({ host, port });
    sock.setTimeout(SEND_TIMEOUT_MS, () => sock.destroy(new Error('timed out')));
    sock.on('connect', () => sock.end(packet));
    sock.on('error', (err: NodeJS.ErrnoException) => {
      this.#log.warn({ host, port, err: err.code ?? err.message }, 'cancel request could not be forwarded to a peer');
    });
    // The peer answers nothing; read to the end so the socket closes.
    sock.resume();
  }

  check(p: PeerCancelPacket): string | null {
    const secret = this.#config().secret;
    if (secret === undefined) return 'no cluster.secret';
    if (!timingSafeEqual(mac(secret, p.signed), p.mac)) return 'bad signature';
    const now = Math.floor(Date.now() / 1000);
    if (Math.abs(now - p.time) > MAX_SKEW_S) return 'too old';
    if (p.instance !== -1 && this.id !== null && p.instance !== this.id) return 'for another instance';
    const seenKey = p.mac.toString('hex');
    this.#prune(Date.now());
    if (this.#seen.has(seenKey)) return 'replayed';
    this.#seen.set(seenKey, Date.now() + 2 * MAX_SKEW_S * 1000);
    return null;
  }

  #prune(now: number): void {
    for (const [k, until] of this.#seen) {
      if (until > now && this.#seen.size < MAX_SEEN) break;
      this.#seen.delete(k);
    }
  }
}

function mac(secret: string, body: Buffer): Buffer {
  return createHmac('sha256', secret).update(body).digest();
}
