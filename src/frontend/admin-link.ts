// The admin link: a client of the virtual database `postern` (or
// `pgbouncer`) after login. Greets like a server and hands every client
// frame to an admin console session, which the composition root makes
// (Context.adminConsole), so this room never imports the console itself.

import type { AdminSession, Context } from '../context.ts';
import { SQLSTATE } from '../protocol/sqlstate.ts';

export interface AdminLinkHost {
  readonly ctx: Context;
  readonly id: number;
  readonly user: string;
  /** The client's application_name, echoed in the greeting. */
  readonly applicationName: string;
  toClient(buf: Buffer, start: number, end: number): boolean;
  greet(params: ReadonlyMap<string, string>): void;
  fatal(code: string, message: string): void;
  close(): void;
  closed(): boolean;
  logError(err: unknown): void;
  pauseClient(): void;
  resumeClient(): void;
}

export class AdminLink {
  readonly #session: AdminSession | null;

  constructor(host: AdminLinkHost, readOnly: boolean) {
    const factory = host.ctx.adminConsole;
    this.#session =
      factory === null
        ? null
        : factory(
            { readOnly, clientId: host.id, user: host.user, alive: () => !host.closed() },
            {
              write: (b) => void host.toClient(b, 0, b.length),
              onTerminate: () => host.close(),
              onFatal: (code, message) => host.fatal(code, message),
              onInternalError: (e) => host.logError(e),
              pause: () => host.pauseClient(),
              resume: () => host.resumeClient(),
            },
          );
    if (this.#session === null) {
      host.fatal(SQLSTATE.FeatureNotSupported, 'the admin console is not available in this process');
      return;
    }
    host.greet(
      new Map([
        ['server_version', `${host.ctx.version} (postern)`],
        ['server_encoding', 'UTF8'],
        ['client_encoding', 'UTF8'],
        ['DateStyle', 'ISO, MDY'],
        ['integer_datetimes', 'on'],
        ['standard_conforming_strings', 'on'],
        ['application_name', host.applicationName],
      ]),
    );
  }

  onClientFrame(type: number, buf: Buffer, start: number, end: number): void {
    this.#session?.onFrame(type, buf, start, end);
  }

  close(): void {
    this.#session?.close();
  }
}
