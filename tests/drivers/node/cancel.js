// Cancelling a running query with node-postgres' CancelRequest (client.cancel).
'use strict'
const { assert, pg, connect, run, sleep, config } = require('./lib')

run(async () => {
  const c = await connect({ application_name: process.env.ITEST_APP })
  const watcher = await connect()
  try {
    const query = new pg.Query('SELECT pg_sleep(30)')
    const started = Date.now()
    const done = new Promise((resolve) => {
      query.callback = (err) => resolve(err)
    })
    c.query(query)
    // wait until the server runs it (own role: its query text is visible)
    for (;;) {
      const r = await watcher.query(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND state = 'active' AND query LIKE 'SELECT pg_sleep%'",
        [process.env.ITEST_APP])
      if (r.rows[0].n > 0) break
      assert.ok(Date.now() - started < 15000, 'query did not start')
      await sleep(50)
    }
    new pg.Client(config()).cancel(c, query)
    const err = await done
    const elapsed = Date.now() - started
    assert.ok(err, 'the query was not cancelled')
    assert.equal(err.code, '57014')
    assert.ok(elapsed < 25000, `cancel took ${elapsed} ms`)
    // The first statement after a cancel is retried once if it was cancelled too:
    // PostgreSQL signals a cancel twice, and under load the second signal can
    // land on the next statement.
    let after
    try {
      after = await c.query("SELECT 'after' AS s")
    } catch (e) {
      if (e.code !== '57014') throw e
      after = await c.query("SELECT 'after' AS s")
    }
    assert.equal(after.rows[0].s, 'after')
    return { code: err.code, message: err.message }
  } finally {
    await c.end()
    await watcher.end()
  }
})
