// Masked columns through node-postgres: plain and star SELECTs, parameters
// (extended protocol), a named prepared statement executed several times,
// array row mode, numeric and date columns, binary results, refused derived
// uses (42501, the session goes on), pg-cursor and COPY TO STDOUT with
// pg-copy-streams. Prints what the driver
// decoded; the test compares it with what the masks give.
// ITEST_TABLE: the people table; ITEST_MANY: the 12,000-row table; ITEST_LOG:
// a table with a masked column this script writes to; ITEST_OUT: the file
// the decoded values are written to as JSON (too large for stdout).
'use strict'
const fs = require('node:fs')
const { Writable } = require('node:stream')
const { pipeline } = require('node:stream/promises')
const Cursor = require('pg-cursor')
const copyStreams = require('pg-copy-streams')
const { assert, connect, run, expectError } = require('./lib')

const T = process.env.ITEST_TABLE
const MANY = process.env.ITEST_MANY
const LOG = process.env.ITEST_LOG
const COLS = 'id, name, email, ssn, salary, born, score, card, note, city'

// A date column as the driver decoded it (a Date at local midnight) -> YYYY-MM-DD.
function ymd(d) {
  if (d === null) return null
  assert.ok(d instanceof Date, `not a Date: ${d}`)
  const p = (n) => String(n).padStart(2, '0')
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}`
}

function person(r) {
  assert.equal(typeof r.salary, 'string') // numeric comes as a string
  assert.equal(typeof r.score, 'number')
  return [r.id, r.name, r.email, r.ssn, r.salary, ymd(r.born), r.score, r.card, r.note, r.city]
}

async function copyOut(c, to, sql) {
  const chunks = []
  const stream = c.query(to(sql))
  await pipeline(stream, new Writable({ write(chunk, enc, cb) { chunks.push(chunk); cb() } }))
  return Buffer.concat(chunks).toString()
}

run(async () => {
  const c = await connect()
  const out = {}
  try {
    out.plain = (await c.query(`SELECT ${COLS} FROM ${T} ORDER BY id`)).rows.map(person)
    const star = await c.query(`SELECT * FROM ${T} ORDER BY id`)
    out.star = star.rows.map(person)
    out.starFields = star.fields.map((f) => f.name)
    out.params = (await c.query(`SELECT ${COLS} FROM ${T} WHERE id > $1 AND city <> $2 ORDER BY id`,
      [0, 'nowhere'])).rows.map(person)
    // a named prepared statement: Parse once, then Bind/Describe/Execute
    out.named = []
    for (const i of [1, 2, 3, 2, 1]) {
      const r = await c.query({ name: 'maskdrv_by_id', text: `SELECT ${COLS} FROM ${T} WHERE id = $1`, values: [i] })
      out.named.push(...r.rows.map(person))
    }
    out.array = (await c.query({ text: `SELECT id, email, salary, born, score FROM ${T} ORDER BY id`,
      rowMode: 'array' })).rows.map((r) => [r[0], r[1], r[2], ymd(r[3]), r[4]])
    // numeric and date columns of many rows decode
    const many = await c.query(`SELECT id, email, salary, born, city FROM ${MANY} WHERE id <= $1 ORDER BY id`, [400])
    out.many = many.rows.map((r) => [r.id, r.email, r.salary, ymd(r.born), r.city])
    out.manyTypes = many.fields.map((f) => f.dataTypeID)
    // binary results: node-postgres reads every field through a UTF-8 string, so
    // only text and small integers come out right (see binary.js)
    const bin = await c.query({ text: `SELECT id, email, ssn, name, card, city FROM ${T} WHERE id > $1 ORDER BY id`,
      values: [0], binary: true })
    assert.ok(bin.fields.every((f) => f.format === 'binary'))
    out.binary = bin.rows.map((r) => [r.id, r.email, r.ssn, r.name, r.card, r.city])
    // refused derived uses, simple and extended, named; the session goes on
    out.refused = []
    out.refused.push((await expectError(c.query(`SELECT upper(email) FROM ${T}`), '42501')).message)
    out.refused.push((await expectError(c.query(`SELECT id FROM ${T} WHERE ssn = $1`, ['123-45-6789']),
      '42501')).message)
    out.refused.push((await expectError(c.query({ name: 'maskdrv_refused', text: `SELECT md5(card) FROM ${T} WHERE id = $1`,
      values: [1] }), '42501')).message)
    out.afterRefusal = (await c.query(`SELECT id, email FROM ${T} WHERE id = $1`, [2])).rows
    out.namedAfterRefusal = (await c.query({ name: 'maskdrv_by_id', values: [3],
      text: `SELECT ${COLS} FROM ${T} WHERE id = $1` })).rows.map(person)
    // inside a transaction a refusal fails the transaction, as an error of the server does
    await c.query('BEGIN')
    await expectError(c.query(`SELECT lower(email) FROM ${T}`), '42501')
    await expectError(c.query('SELECT 1'), '25P02')
    await c.query('ROLLBACK')
    out.afterRollback = (await c.query(`SELECT ssn FROM ${T} WHERE id = 1`)).rows[0].ssn
    // writing a masked column, reading it back
    for (const i of [1, 2, 7]) {
      await c.query(`INSERT INTO ${LOG} (id, secret, city) VALUES ($1, $2, $3)`,
        [i, `log-secret-node-${String(i).padStart(4, '0')}`, `town${i}`])
    }
    out.log = (await c.query(`SELECT id, secret, city FROM ${LOG} ORDER BY id`)).rows
    // a cursor (Execute with a row limit, PortalSuspended between batches)
    await c.query('BEGIN')
    const cur = c.query(new Cursor(`SELECT id, email, salary, born, city FROM ${MANY} WHERE id > $1 ORDER BY id`, [0]))
    const rows = []
    for (;;) {
      const batch = await cur.read(997)
      if (batch.length === 0) break
      rows.push(...batch.map((r) => [r.id, r.email, r.salary, ymd(r.born), r.city]))
    }
    await cur.close()
    await c.query('COMMIT')
    out.cursor = rows
    // COPY TO STDOUT
    out.copy = {
      text: await copyOut(c, copyStreams.to, `COPY (SELECT id, email, ssn, card, note, city FROM ${T} ORDER BY id) TO STDOUT`),
      csv: await copyOut(c, copyStreams.to, `COPY ${T} (id, email, ssn, city) TO STDOUT WITH (FORMAT csv, HEADER)`),
      many: await copyOut(c, copyStreams.to, `COPY ${MANY} (id, email) TO STDOUT`),
    }
    out.copyBinary = (await expectError(copyOut(c, copyStreams.to, `COPY ${T} TO STDOUT WITH (FORMAT binary)`),
      '42501')).message
    out.last = (await c.query('SELECT 40 + 2 AS v')).rows[0].v
  } finally {
    await c.end()
  }
  fs.writeFileSync(process.env.ITEST_OUT, JSON.stringify(out))
  return { written: Object.keys(out).length }
})
