// COPY FROM STDIN and COPY TO STDOUT with pg-copy-streams.
'use strict'
const { pipeline } = require('node:stream/promises')
const { Readable, Writable } = require('node:stream')
const { from: copyFrom, to: copyTo } = require('pg-copy-streams')
const { assert, connect, run, table, expectError } = require('./lib')

run(async () => {
  const c = await connect()
  try {
    const n = 20000
    function* lines() {
      for (let i = 1; i <= n; i++) yield `${i}\tnode row ${i}\n`
    }
    const ingest = c.query(copyFrom(`COPY ${table} (id, note) FROM STDIN`))
    await pipeline(Readable.from(lines()), ingest)
    assert.equal(ingest.rowCount, n)
    const chunks = []
    const out = c.query(copyTo(`COPY (SELECT id, note FROM ${table} ORDER BY id) TO STDOUT`))
    await pipeline(out, new Writable({ write(chunk, enc, cb) { chunks.push(chunk); cb() } }))
    const text = Buffer.concat(chunks).toString()
    assert.equal(text, Array.from(lines()).join(''))
    // a bad row fails the COPY; the session goes on
    const bad = c.query(copyFrom(`COPY ${table} (id, note) FROM STDIN`))
    await expectError(pipeline(Readable.from(['999999\tok\n', 'x\ty\n']), bad), '22P02')
    const cnt = Number((await c.query(`SELECT count(*) AS n FROM ${table}`)).rows[0].n)
    return { copied_in: n, bytes_out: text.length, count: cnt }
  } finally {
    await c.end()
  }
})
