// A pg.Pool: concurrent queries over a few pooled connections, a transaction
// on a checked-out client, and an error that does not poison the pool.
'use strict'
const { assert, pg, config, run } = require('./lib')

run(async () => {
  const pool = new pg.Pool(config({ max: 4 }))
  try {
    const results = await Promise.all(Array.from({ length: 40 }, (_, i) => pool.query('SELECT $1::int * 2 AS v, pg_backend_pid() AS pid', [i])))
    assert.deepEqual(results.map((r) => r.rows[0].v), Array.from({ length: 40 }, (_, i) => i * 2))
    const pids = new Set(results.map((r) => r.rows[0].pid))
    assert.ok(pids.size >= 1 && pids.size <= 4, `used ${pids.size} server sessions`)
    const client = await pool.connect()
    try {
      await client.query('BEGIN')
      const n = await client.query('SELECT count(*)::int AS n FROM users')
      await client.query('COMMIT')
      assert.equal(n.rows[0].n, 100)
    } finally {
      client.release()
    }
    await assert.rejects(pool.query('SELECT 1/0'), (e) => e.code === '22012')
    assert.equal((await pool.query('SELECT 7 AS v')).rows[0].v, 7)
    return { queries: results.length, sessions: pids.size <= 4 }
  } finally {
    await pool.end()
  }
})
