// LISTEN/NOTIFY between two connections.
'use strict'
const { assert, connect, run } = require('./lib')

run(async () => {
  const channel = process.env.ITEST_CHANNEL
  const listener = await connect()
  const notifier = await connect()
  try {
    const got = []
    const arrived = new Promise((resolve) => {
      listener.on('notification', (m) => {
        got.push([m.channel, m.payload])
        if (got.length === 2) resolve()
      })
    })
    await listener.query(`LISTEN ${channel}`)
    await notifier.query(`NOTIFY ${channel}, 'one'`)
    await notifier.query('SELECT pg_notify($1, $2)', [channel, 'twö'])
    await arrived
    assert.deepEqual(got, [[channel, 'one'], [channel, 'twö']])
    return { got }
  } finally {
    await listener.end()
    await notifier.end()
  }
})
