// TLS with certificate verification against the test CA (ITEST_CA).
'use strict'
const fs = require('node:fs')
const { assert, connect, run } = require('./lib')

run(async () => {
  const ssl = { ca: fs.readFileSync(process.env.ITEST_CA), rejectUnauthorized: true, servername: 'localhost' }
  const c = await connect({ ssl })
  try {
    assert.ok(c.connection.stream.encrypted, 'not encrypted')
    const proto = c.connection.stream.getProtocol()
    assert.equal((await c.query('SELECT 40 + 2 AS v')).rows[0].v, 42)
    return { protocol: proto }
  } finally {
    await c.end()
  }
})
