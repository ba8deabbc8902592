// Connect; simple, parameterized and named prepared statements; multi-statement strings.
'use strict'
const { assert, connect, run } = require('./lib')

run(async () => {
  const c = await connect()
  try {
    assert.equal((await c.query('SELECT 1 AS one')).rows[0].one, 1)
    const who = (await c.query('SELECT current_user AS cu, session_user AS su')).rows[0]
    const r = await c.query('SELECT name, email FROM users WHERE id = $1', [7])
    assert.deepEqual(r.rows, [{ name: 'Zoë Müller', email: 'user7@example.com' }])
    assert.deepEqual(r.fields.map((f) => f.name), ['name', 'email'])
    // named prepared statement, executed several times (Parse once, then Bind/Execute)
    for (let i = 1; i <= 5; i++) {
      const p = await c.query({ name: 'by_id', text: 'SELECT id, active FROM users WHERE id = $1', values: [i] })
      assert.deepEqual(p.rows, [{ id: i, active: i % 2 === 0 }])
    }
    const prepared = await c.query("SELECT name FROM pg_prepared_statements WHERE name = 'by_id'")
    assert.equal(prepared.rowCount, 1)
    // array row mode, NULLs, several types
    const t = await c.query({ text: 'SELECT $1::int + 1, $2::text, NULL::int, 1.5::float8, true', values: [41, "it's"], rowMode: 'array' })
    assert.deepEqual(t.rows[0], [42, "it's", null, 1.5, true])
    // a multi-statement simple query gives one result per statement
    const multi = await c.query("SELECT 1 AS a; SELECT 'b' AS b; SET search_path = public")
    assert.equal(multi.length, 3)
    assert.equal(multi[1].rows[0].b, 'b')
    assert.equal(multi[2].command, 'SET')
    const count = await c.query('SELECT count(*)::int AS n FROM orders WHERE status = $1', ['paid'])
    return { current_user: who.cu, session_user: who.su, paid: count.rows[0].n }
  } finally {
    await c.end()
  }
})
