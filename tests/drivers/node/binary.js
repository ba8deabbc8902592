// Results in binary format (Bind with result format 1). node-postgres decodes
// every field through a UTF-8 string first, so only types whose binary form it
// gets right are compared here (int2, int4, bool, text).
'use strict'
const { assert, connect, run } = require('./lib')

run(async () => {
  const c = await connect()
  try {
    const sql = 'SELECT id, id::int2 AS small, name, email, active FROM users WHERE id <= $1 ORDER BY id'
    const text = await c.query({ text: sql, values: [100] })
    const bin = await c.query({ text: sql, values: [100], binary: true })
    assert.ok(bin.fields.every((f) => f.format === 'binary'), 'fields not binary')
    assert.ok(text.fields.every((f) => f.format === 'text'), 'fields not text')
    assert.deepEqual(bin.rows, text.rows)
    assert.equal(bin.rows[6].name, 'Zoë Müller')
    return { rows: bin.rowCount, formats: [...new Set(bin.fields.map((f) => f.format))] }
  } finally {
    await c.end()
  }
})
