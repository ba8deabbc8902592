// Commit and rollback, as seen from a second connection.
'use strict'
const { assert, connect, run, table } = require('./lib')

run(async () => {
  const w = await connect()
  const r = await connect()
  const count = async () => Number((await r.query(`SELECT count(*) AS n FROM ${table}`)).rows[0].n)
  try {
    await w.query('BEGIN')
    await w.query(`INSERT INTO ${table} VALUES ($1, $2)`, [1, 'committed'])
    assert.equal(await count(), 0)
    await w.query('COMMIT')
    assert.equal(await count(), 1)
    await w.query('BEGIN')
    await w.query(`INSERT INTO ${table} VALUES ($1, $2)`, [2, 'rolled back'])
    assert.equal(Number((await w.query(`SELECT count(*) AS n FROM ${table}`)).rows[0].n), 2)
    await w.query('ROLLBACK')
    assert.equal(await count(), 1)
    await w.query('BEGIN')
    await w.query('SAVEPOINT s1')
    await w.query(`INSERT INTO ${table} VALUES (3, 'undone')`)
    await w.query('ROLLBACK TO SAVEPOINT s1')
    await w.query(`INSERT INTO ${table} VALUES (4, 'kept')`)
    await w.query('COMMIT')
    const ids = (await r.query(`SELECT id FROM ${table} ORDER BY id`)).rows.map((x) => x.id)
    return { ids }
  } finally {
    await w.end()
    await r.end()
  }
})
