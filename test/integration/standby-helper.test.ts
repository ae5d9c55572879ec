// The dev kit's streaming standby: startStandby() follows its primary (a row
// written there shows up on the standby, which stays read-only and in
// recovery), and once the primary is gone promote() makes it a writable server.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { type PgCluster, type PgStandby, startPostgres, startStandby } from '../../src/dev/cluster.ts';

const REPLAY_TIMEOUT_MS = 10_000;
let primary: PgCluster | undefined;
let standby: PgStandby | undefined;

before(async () => {
  primary = await startPostgres();
  standby = await startStandby(primary);
});

after(async () => {
  await standby?.stop();
  await primary?.stop();
});

/** Polls `sql` on `c` until it prints `want`; errors (say, a table not replayed yet) count as not yet. */
async function eventually(c: PgCluster, sql: string, want: string): Promise<void> {
  const deadline = Date.now() + REPLAY_TIMEOUT_MS;
  let last = '';
  for (;;) {
    last = await c.psql(sql).catch((e: Error) => `error: ${e.message}`);
    if (last === want) return;
    if (Date.now() > deadline) assert.fail(`${sql} gave ${JSON.stringify(last)} after ${REPLAY_TIMEOUT_MS}ms, want ${want}`);
    await new Promise((done) => setTimeout(done, 100));
  }
}

test('a standby replays what the primary writes, and takes writes once promoted', async () => {
  assert.ok(primary && standby);
  assert.notEqual(standby.port, primary.port);
  assert.equal(standby.superuser, primary.superuser);
  assert.equal(await primary.psql('select pg_is_in_recovery()'), 'f');
  assert.equal(await standby.psql('select pg_is_in_recovery()'), 't');

  await primary.psql("CREATE TABLE standby_t (id int PRIMARY KEY, note text); INSERT INTO standby_t VALUES (1, 'from the primary')");
  await eventually(standby, 'select note from standby_t where id = 1', 'from the primary');
  await assert.rejects(standby.psql("INSERT INTO standby_t VALUES (2, 'on the standby')"), /read-only transaction/);

  await primary.stop();
  await standby.promote();
  assert.equal(await standby.psql('select pg_is_in_recovery()'), 'f');
  await standby.psql("INSERT INTO standby_t VALUES (2, 'after promotion')");
  assert.equal(await standby.psql("select string_agg(note, ', ' ORDER BY id) from standby_t"), 'from the primary, after promotion');
});
