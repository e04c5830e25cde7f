// Runs a real server SDK against the bridge and reports what the SDK's own callbacks saw.
//
// Reads one JSON job on stdin:
//   {"sdk": "segment" | "rudderstack", "url": "http://127.0.0.1:PORT", "writeKey": "...",
//    "gzip": bool, "calls": [{"method": "track" | "identify", "params": {...}}]}
// Sends every call through the SDK (one batch: flushAt = the number of calls), flushes,
// and prints one JSON line: {"errors": [text, ...], "statuses": [HTTP status, ...]}.
// Packages come from SDK_E2E_PREFIX/node_modules (installed by the test with npm ci).
'use strict'

const path = require('path')

const prefix = process.env.SDK_E2E_PREFIX
if (!prefix) throw new Error('SDK_E2E_PREFIX is not set')
const load = (name) => require(path.join(prefix, 'node_modules', name))

function readStdin() {
  return new Promise((resolve, reject) => {
    let text = ''
    process.stdin.setEncoding('utf8')
    process.stdin.on('data', (chunk) => { text += chunk })
    process.stdin.on('end', () => resolve(text))
    process.stdin.on('error', reject)
  })
}

function describe(err) {
  if (!err) return null
  const status = err.response && err.response.status
  const reason = err.reason || (err.ctx && err.ctx.failedDelivery && err.ctx.failedDelivery().reason)
  return [status ? `status ${status}` : null, err.message, reason && String(reason)]
    .filter(Boolean).join(': ') || String(err)
}

async function runSegment(job, report) {
  const { Analytics } = load('@segment/analytics-node')
  const analytics = new Analytics({
    writeKey: job.writeKey,
    host: job.url,
    flushAt: job.calls.length,
    flushInterval: 200,
    maxRetries: 3,
    httpRequestTimeout: 15000,
  })
  analytics.on('http_response', (r) => report.statuses.push(r.status))
  analytics.on('error', (err) => report.errors.push(describe(err)))
  const done = job.calls.map((call) => new Promise((resolve) => {
    analytics[call.method](call.params, (err) => {
      if (err) report.errors.push(describe(err))
      resolve()
    })
  }))
  await Promise.all(done)
  await analytics.closeAndFlush({ timeout: 60000 })
}

async function runRudderstack(job, report) {
  const Analytics = load('@rudderstack/rudder-sdk-node')
  const client = new Analytics(job.writeKey, {
    dataPlaneUrl: job.url,
    flushAt: job.calls.length,
    flushInterval: 200,
    retryCount: 3,
    gzip: job.gzip !== false,
    errorHandler: (err) => report.errors.push(describe(err)),
  })
  // The SDK's own axios instance: count each answer it got, retries included.
  client.axiosInstance.interceptors.response.use(
    (r) => { report.statuses.push(r.status); return r },
    (err) => { if (err.response) report.statuses.push(err.response.status); return Promise.reject(err) },
  )
  const done = job.calls.map((call) => new Promise((resolve) => {
    client[call.method](call.params, (err) => {
      if (err) report.errors.push(describe(err))
      resolve()
    })
  }))
  await client.flush()
  await Promise.all(done)
}

async function main() {
  const job = JSON.parse(await readStdin())
  const report = { errors: [], statuses: [] }
  if (job.sdk === 'segment') await runSegment(job, report)
  else if (job.sdk === 'rudderstack') await runRudderstack(job, report)
  else throw new Error(`unknown sdk ${job.sdk}`)
  report.errors = [...new Set(report.errors)]
  process.stdout.write(JSON.stringify(report) + '\n')
}

main().then(() => process.exit(0), (err) => {
  process.stderr.write(String(err && err.stack || err) + '\n')
  process.exit(1)
})
