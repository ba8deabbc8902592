// Held statements through node-postgres, against a pgveil holding DELETE and
// UPDATE of ITEST_TABLE whose approver approves the first held statement,
// denies the second and lets the third wait past hold_timeout: each is
// announced by a notice naming its approval id; the approved one runs, the
// denied one is 42501, the undecided one 57014, and the session stays usable.
'use strict'
const { assert, connect, run, table, expectError } = require('./lib')

run(async () => {
  const c = await connect({ ssl: { rejectUnauthorized: false } })
  const notices = []
  c.on('notice', (msg) => notices.push(msg.message))
  try {
    const approved = await c.query(`DELETE FROM ${table} WHERE id = 1`)
    assert.equal(approved.rowCount, 1)
    const denied = await expectError(c.query(`DELETE FROM ${table} WHERE id = $1`, [2]), '42501') // held at Bind
    await expectError(c.query(`UPDATE ${table} SET v = 0 WHERE id = 3`), '57014')
    const ok = (await c.query("SELECT 'usable' AS s")).rows[0].s
    return { notices, denied: denied.message, ok }
  } finally {
    await c.end()
  }
})
