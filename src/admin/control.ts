// The local effect of the admin console's control commands (PAUSE, RESUME,
// KILL, RECONNECT, ...) on one process's pools and sessions. With several
// worker processes the console's executor runs the same command in every
// worker (src/cluster) and combines the outcomes; each worker runs this.

import type { Context } from '../context.ts';
import { SQLSTATE } from '../protocol/sqlstate.ts';
import type { AdminCommand } from './commands.ts';

/** A control command without SHOW (what crosses process boundaries). */
export type ControlCommand = Exclude<AdminCommand, { verb: 'SHOW' }>;

/** What one process reports back: problems (RELOAD, SET) and whether it found its target (KILL_CLIENT). */
export interface ControlOutcome {
  problems: Array<{ path: string; message: string }>;
  found: boolean;
  /** RELOAD: changed settings that need a restart (kept at their running values). */
  unapplied?: string[];
}

async function waitFor(done: () => boolean, alive: () => boolean): Promise<void> {
  while (!done()) {
    if (!alive()) return;
    await new Promise((r) => setTimeout(r, 25));
  }
}

/**
 * Runs `cmd` on this process. `alive` says whether the console session that
 * asked still waits (PAUSE and WAIT_CLOSE stop waiting when it is gone).
 */
export async function runControl(
  ctx: Context,
  cmd: ControlCommand,
  who: string,
  alive: () => boolean = () => true,
): Promise<ControlOutcome> {
  const ok: ControlOutcome = { problems: [], found: true };
  switch (cmd.verb) {
    case 'PAUSE':
      ctx.log.info({ admin: who, database: cmd.db ?? '*' }, 'PAUSE');
      ctx.pools.pause(cmd.db);
      // PgBouncer's PAUSE returns once every server connection of the paused
      // databases is released and closed, so a script can restart the server next.
      await waitFor(() => ctx.pools.pausedOpen(cmd.db) === 0, alive);
      return ok;
    case 'RESUME':
      ctx.log.info({ admin: who, database: cmd.db ?? '*' }, 'RESUME');
      ctx.pools.resume(cmd.db);
      return ok;
    case 'DISABLE':
    case 'ENABLE':
      ctx.pools.setDisabled(cmd.db as string, cmd.verb === 'DISABLE');
      ctx.log.info({ admin: who, database: cmd.db }, cmd.verb);
      return ok;
    case 'RECONNECT':
      for (const p of ctx.pools.all()) if (cmd.db === null || p.target.name === cmd.db) p.reconnect();
      ctx.log.info({ admin: who, database: cmd.db ?? '*' }, 'RECONNECT');
      return ok;
    case 'WAIT_CLOSE':
      await waitFor(() => ctx.pools.all().every((p) => (cmd.db !== null && p.target.name !== cmd.db) || p.closeNeeded === 0), alive);
      return ok;
    case 'KILL': {
      ctx.log.info({ admin: who, database: cmd.db ?? '*' }, 'KILL');
      // PgBouncer: new clients of a killed database wait until RESUME.
      ctx.pools.pause(cmd.db);
      for (const s of [...ctx.sessions]) {
        const i = s.info();
        if (i.admin || i.state === 'closed') continue;
        if (cmd.db === null || i.database === cmd.db)
          s.terminate(SQLSTATE.AdminShutdown, 'terminating connection due to administrator command');
      }
      for (const p of ctx.pools.all()) if (cmd.db === null || p.target.name === cmd.db) p.kill();
      return ok;
    }
    case 'KILL_CLIENT': {
      const target = [...ctx.sessions].find((s) => s.id === cmd.id);
      if (target === undefined) return { problems: [], found: false };
      ctx.log.info({ admin: who, client: cmd.id }, 'KILL_CLIENT');
      target.terminate(SQLSTATE.AdminShutdown, 'terminating connection due to administrator command');
      return ok;
    }
    case 'RELOAD': {
      const control = ctx.control;
      if (control === null) return { problems: [{ path: '', message: 'RELOAD is not available in this process' }], found: true };
      const problems = control.reload();
      return { problems, found: true, unapplied: problems.length === 0 ? control.unapplied() : [] };
    }
    case 'SET':
      return {
        problems: ctx.control?.set(cmd.key, cmd.value) ?? [{ path: cmd.key, message: 'SET is not available in this process' }],
        found: true,
      };
    case 'SHUTDOWN': {
      const control = ctx.control;
      if (control === null) return { problems: [{ path: '', message: 'SHUTDOWN is not available in this process' }], found: true };
      ctx.log.info({ admin: who }, 'SHUTDOWN');
      // After this command's answer went out.
      setTimeout(() => control.shutdown(), 20).unref();
      return ok;
    }
    case 'SUSPEND':
      return ok;
    default:
      return cmd satisfies never;
  }
}
