// Preloaded into dynalite (node --require): keep the server up when a client drops a request.
//
// dynalite 4.0.0 (the latest) rethrows a request's 'error' event, so any client that closes
// its socket mid-body -- a SIGKILLed KCL worker, say -- crashes the whole lease store
// (architect/dynalite#183). Only that error is absorbed; every other one still kills the
// process, as it would without this file.
'use strict'

process.on('uncaughtException', function (err) {
  if (err && err.code === 'ECONNRESET' && err.message === 'aborted') {
    process.stderr.write('dynalite: a client dropped a request mid-body; kept serving\n')
    return
  }
  process.stderr.write((err && err.stack ? err.stack : String(err)) + '\n')
  process.exit(1)
})
