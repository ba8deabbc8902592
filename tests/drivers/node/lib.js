// Shared helpers of the node-postgres scenarios. Connection settings come from
// the standard PG* environment variables (PGHOST, PGPORT, PGUSER, PGPASSWORD,
// PGDATABASE); ITEST_* variables carry per-test values. Each scenario prints
// one JSON object on stdout and exits 0, or prints the failure and exits 1.
'use strict'
const assert = require('node:assert/strict')
const pg = require('pg')

function config(extra = {}) {
  return { connectionTimeoutMillis: 10000, ...extra }
}

async function connect(extra = {}) {
  const client = new pg.Client(config(extra))
  client.on('error', (err) => console.error('client error:', err.message))
  await client.connect()
  return client
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

async function expectError(promise, code) {
  try {
    await promise
  } catch (err) {
    assert.equal(err.code, code, `expected SQLSTATE ${code}, got ${err.code}: ${err.message}`)
    return err
  }
  assert.fail(`expected an error with SQLSTATE ${code}`)
}

function run(main) {
  const timer = setTimeout(() => {
    console.error('scenario timed out')
    process.exit(2)
  }, Number(process.env.ITEST_TIMEOUT_MS || 100000))
  main()
    .then((result) => {
      clearTimeout(timer)
      process.stdout.write(JSON.stringify(result || {}) + '\n')
      process.exit(0)
    })
    .catch((err) => {
      clearTimeout(timer)
      console.error(err && err.stack ? err.stack : err)
      process.exit(1)
    })
}

module.exports = { assert, pg, config, connect, sleep, expectError, run, table: process.env.ITEST_TABLE }
