// Statements the rules block come back as 42501 and never run; the session
// stays usable and a blocked statement aborts the transaction around it.
'use strict'
const { assert, connect, run, table, expectError } = require('./lib')

run(async () => {
  const c = await connect()
  try {
    const drop = await expectError(c.query(`DROP TABLE ${table}`), '42501')
    assert.equal(drop.message, 'destructive statements are not allowed')
    await expectError(c.query(`DELETE FROM ${table} WHERE $1::bool`, [true]), '42501') // extended protocol
    await expectError(c.query({ name: 'trunc', text: `TRUNCATE ${table}` }), '42501')
    await expectError(c.query('SELECT 1 FROM WHERE'), '42601')
    await c.query('BEGIN')
    await c.query(`INSERT INTO ${table} VALUES (1, 'rolled back')`)
    await expectError(c.query(`ALTER TABLE ${table} DROP COLUMN note`), '42501')
    await expectError(c.query('SELECT 1'), '25P02')
    await c.query('ROLLBACK')
    const n = (await c.query(`SELECT count(*)::int AS n FROM ${table}`)).rows[0].n
    return { rows: n, ok: (await c.query("SELECT 'usable' AS s")).rows[0].s }
  } finally {
    await c.end()
  }
})
