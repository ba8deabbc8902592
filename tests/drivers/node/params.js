// ParameterStatus reporting and startup settings (application_name, options).
'use strict'
const { assert, connect, run } = require('./lib')

run(async () => {
  const status = {}
  const c = new (require('pg').Client)({
    connectionTimeoutMillis: 10000,
    application_name: process.env.ITEST_APP,
    options: '-c DateStyle=Postgres,DMY -c statement_timeout=54321',
  })
  c.connection.on('parameterStatus', (m) => { status[m.parameterName] = m.parameterValue })
  await c.connect()
  try {
    assert.match(status.server_version, /^15/)
    assert.equal(status.application_name, process.env.ITEST_APP)
    assert.equal(status.DateStyle, 'Postgres, DMY')
    assert.equal(status.client_encoding, 'UTF8')
    assert.equal(status.integer_datetimes, 'on')
    assert.equal((await c.query('SHOW statement_timeout')).rows[0].statement_timeout, '54321ms')
    const pid = (await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid
    await c.query("SET application_name = 'node-renamed'")
    assert.equal(status.application_name, 'node-renamed')
    await c.query(`SET application_name = '${process.env.ITEST_APP}'`)
    // let the test look at pg_stat_activity while this session is open
    process.stdout.write(JSON.stringify({ pid }) + '\n')
    await new Promise((resolve) => process.stdin.once('data', resolve))
    process.stdin.pause()
    return { status }
  } finally {
    await c.end()
  }
})
