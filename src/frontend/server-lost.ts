// A server connection that closed under a session it served (relayed or
// pooled): what the client is told, the same way for every link.

import type { ServerConn } from '../backend/server-conn.ts';
import type { Logger } from '../observability/log.ts';
import { SQLSTATE } from '../protocol/sqlstate.ts';

/** The parts of a link's host that tell the client. */
export interface LostHost {
  logFor(server: ServerConn | null): Logger;
  fatal(code: string, message: string, detail?: string): void;
  close(): void;
  destroy(): void;
}

/**
 * `saidFatal`: the server sent its own FATAL first, which the client has;
 * the session just closes. Otherwise PostgreSQL's libpq wording, as an 08006
 * FATAL between messages; mid-message the client is cut off (an error frame
 * would be read as the rest of that message).
 */
export function serverLost(host: LostHost, server: ServerConn, database: string, saidFatal: boolean): void {
  if (saidFatal) {
    host.close();
    return;
  }
  host.logFor(server).warn({ database }, 'server closed the connection unexpectedly');
  if (server.atBoundary)
    host.fatal(
      SQLSTATE.ConnectionFailure,
      'server closed the connection unexpectedly',
      'This probably means the server terminated abnormally before or while processing the request.',
    );
  else host.destroy();
}
