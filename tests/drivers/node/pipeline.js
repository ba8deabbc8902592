// Pipeline mode: many queries on the wire before the first result comes back.
'use strict'
const { assert, connect, run, table } = require('./lib')

run(async () => {
  const c = await connect({ pipeline: true })
  try {
    const inserts = []
    for (let i = 1; i <= 500; i++) inserts.push(c.query(`INSERT INTO ${table} VALUES ($1, $2)`, [i, `p${i}`]))
    const selects = []
    for (let i = 1; i <= 100; i++) selects.push(c.query('SELECT $1::int * 3 AS v', [i]))
    await Promise.all(inserts)
    const vals = (await Promise.all(selects)).map((r) => r.rows[0].v)
    assert.deepEqual(vals, Array.from({ length: 100 }, (_, k) => (k + 1) * 3))
    // an error fails its own query only
    const results = await Promise.allSettled([
      c.query('SELECT 1 AS a'),
      c.query('SELECT 1/0'),
      c.query('SELECT 3 AS c'),
    ])
    assert.deepEqual(results.map((r) => r.status), ['fulfilled', 'rejected', 'fulfilled'])
    assert.equal(results[1].reason.code, '22012')
    const n = Number((await c.query(`SELECT count(*) AS n FROM ${table}`)).rows[0].n)
    return { rows: n }
  } finally {
    await c.end()
  }
})
