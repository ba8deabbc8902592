// A large result: the 1M-row table streamed row by row, and 100 MB held in memory.
'use strict'
const { assert, pg, connect, run } = require('./lib')

run(async () => {
  const c = await connect()
  try {
    let count = 0
    let sum = 0
    await new Promise((resolve, reject) => {
      const q = c.query(new pg.Query('SELECT id, payload FROM big'))
      q.on('row', (row) => {
        count++
        sum += row.id
        if (row.payload.length !== 96) reject(new Error('bad payload'))
      })
      q.on('end', resolve)
      q.on('error', reject)
    })
    const r = await c.query({ text: "SELECT i, repeat('n', 1000) AS s FROM generate_series(1, 100000) i", rowMode: 'array' })
    assert.equal(r.rows.length, 100000)
    assert.ok(r.rows.every((x) => x[1].length === 1000))
    return { count, sum, inMemory: r.rows.length }
  } finally {
    await c.end()
  }
})
