// Errors carry their SQLSTATE and fields; the session stays usable.
'use strict'
const { assert, connect, run, table, expectError } = require('./lib')

run(async () => {
  const c = await connect()
  try {
    const e1 = await expectError(c.query('SELECT 1/0'), '22012')
    assert.equal(e1.severity, 'ERROR')
    assert.equal(e1.message, 'division by zero')
    assert.equal((await c.query('SELECT 2 AS v')).rows[0].v, 2)
    await expectError(c.query('SELECT $1::int / 0', [7]), '22012') // extended protocol
    await expectError(c.query('SELECT * FROM missing_table'), '42P01')
    await c.query(`INSERT INTO ${table} VALUES (1, 'x')`)
    const dup = await expectError(c.query(`INSERT INTO ${table} VALUES (1, 'y')`), '23505')
    assert.equal(dup.constraint, `${table}_pkey`)
    assert.equal(dup.table, table)
    await c.query('BEGIN')
    await expectError(c.query('SELECT 1/0'), '22012')
    await expectError(c.query('SELECT 1'), '25P02')
    await c.query('ROLLBACK')
    await expectError(c.query({ name: 'bad', text: 'SELECT nonsense FROM' }), '42601')
    const notices = []
    c.on('notice', (n) => notices.push(n.message))
    await c.query("DO $$ BEGIN RAISE NOTICE 'note %', 5; END $$")
    assert.deepEqual(notices, ['note 5'])
    return { ok: (await c.query("SELECT 'usable' AS s")).rows[0].s }
  } finally {
    await c.end()
  }
})
