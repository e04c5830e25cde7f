#!/usr/bin/env node
'use strict'
// End-to-end driver: Segment's own Webhook (Actions) destination (`actions-webhook`, from
// @segment/action-destinations) run by @segment/actions-core's test harness, posting to a
// URL (the bridge's POST /segment).
//
//   node driver.js [JOB.json]        (the job is read from stdin when no file is given)
//
// Job: {"url", "sharedSecret", "timeoutMs"?, "calls": [{"name", "event": {...}} |
//                                                      {"name", "events": [...]}]}
// A call with "event" goes through testAction('send', ...), one with "events" through
// testBatchAction('send', ...), each on a FRESH createTestIntegration(definition): an
// integration's `responses` accumulate. Calls run one after the other.
//
// Anywhere in an event, {"$utf16": ["ab", 55296, "cd"]} becomes the JS string made of the
// text parts and UTF-16 code units (here 'ab' + '\ud800' + 'cd'): the way to send a lone
// surrogate, which JSON.stringify writes as the escape \ud800.
//
// Prints one JSON line per call:
//   {"name", "kind": "single"|"batch", "events", "settled", "status", "ms", "error",
//    "multistatus": {"<status>": count} (batch only, when it settled), "bodyBytes",
//    "answer" (the first 300 characters of the answer the engine read),
//    "wireStatus", "wireBytes", "wireMs"}
// `settled` is false when the call neither resolved nor failed within timeoutMs (e.g. the
// engine stalls reading a large answer through its cloned response stream); `status` is the
// HTTP status the engine got from the bridge (null when none came back); `wireStatus` and
// `wireBytes` are the status line and Content-Length of the answer as it arrived on the
// socket, and `wireMs` when its head arrived, recorded even when the engine never finished
// reading it.
//
// Modules are loaded from $SEGMENT_E2E_PREFIX/node_modules (where the test ran `npm ci`),
// else from this folder's node_modules.

const fs = require('fs')
const path = require('path')
const { createRequire } = require('module')

const prefix = process.env.SEGMENT_E2E_PREFIX || __dirname
const requireFromPrefix = createRequire(path.join(path.resolve(prefix), 'package.json'))
const { createTestIntegration } = requireFromPrefix('@segment/actions-core')
// Only the webhook destination is loaded (the package's index would load every destination).
const webhook = requireFromPrefix('@segment/action-destinations/dist/destinations/webhook')
const definition = webhook.default || webhook

// Observe (not change) what came over the wire: the status line and Content-Length of the
// bridge's answer, seen even when the engine never finishes reading it.
const http = require('http')
let wire = null
const originalRequest = http.request
http.request = function observedRequest(...args) {
  const request = originalRequest.apply(this, args)
  const slot = wire
  request.on('response', (res) => {
    if (slot) {
      slot.status = res.statusCode
      slot.ms = Number(process.hrtime.bigint() - slot.started) / 1e6
      slot.contentLength = Number(res.headers['content-length'] ?? NaN)
    }
  })
  return request
}

function readJob() {
  const file = process.argv[2]
  const text = file && file !== '-' ? fs.readFileSync(file, 'utf8') : fs.readFileSync(0, 'utf8')
  return JSON.parse(text)
}

function decodeMarkers(value) {
  if (Array.isArray(value)) return value.map(decodeMarkers)
  if (value !== null && typeof value === 'object') {
    const keys = Object.keys(value)
    if (keys.length === 1 && keys[0] === '$utf16' && Array.isArray(value.$utf16)) {
      return value.$utf16
        .map((part) => (typeof part === 'number' ? String.fromCharCode(part) : String(part)))
        .join('')
    }
    const out = {}
    for (const k of keys) out[k] = decodeMarkers(value[k])
    return out
  }
  return value
}

function summarise(statuses) {
  const counts = {}
  for (const s of statuses) counts[String(s)] = (counts[String(s)] || 0) + 1
  return counts
}

async function runCall(call, job) {
  const integration = createTestIntegration(definition)
  const mapping = { url: job.url, method: 'POST', data: { '@path': '$.' } }
  const settings = { sharedSecret: job.sharedSecret }
  const isBatch = Array.isArray(call.events)
  const line = {
    name: call.name,
    kind: isBatch ? 'batch' : 'single',
    events: isBatch ? call.events.length : 1,
    settled: false,
    status: null,
    ms: null,
    error: null
  }
  const started = process.hrtime.bigint()
  wire = { started }
  const observed = wire
  const work = isBatch
    ? integration.testBatchAction('send', { events: decodeMarkers(call.events), mapping, settings })
    : integration.testAction('send', {
        event: decodeMarkers(call.event),
        mapping,
        settings,
        useDefaultMappings: false
      })
  let timer
  const timeout = new Promise((resolve) => {
    timer = setTimeout(() => resolve('timeout'), job.timeoutMs || 10000)
  })
  let outcome
  let returned = []
  try {
    outcome = await Promise.race([
      work.then((responses) => {
        returned = responses
        return 'ok'
      }),
      timeout
    ])
  } catch (err) {
    outcome = 'error'
    line.error = `${err && err.name ? err.name : 'Error'}: ${err && err.message ? err.message : err}`
    if (err && err.response && typeof err.response.status === 'number') {
      line.status = err.response.status
    }
  } finally {
    clearTimeout(timer)
  }
  line.ms = Math.round(Number(process.hrtime.bigint() - started) / 1e4) / 100
  line.settled = outcome !== 'timeout'
  if (!line.settled) {
    line.error = `did not settle within ${job.timeoutMs || 10000} ms`
  }
  // The engine's view of the HTTP exchange: the responses the call returned or, when it threw
  // or stalled, those still held by the integration (testAction empties them on return).
  const response = returned[0] || integration.responses[0]
  if (response) {
    if (line.status === null) line.status = response.status
    if (typeof response.content === 'string') {
      line.bodyBytes = Buffer.byteLength(response.content)
      line.answer = response.content.slice(0, 300)
    }
  }
  line.wireStatus = observed.status ?? null
  line.wireBytes = Number.isFinite(observed.contentLength) ? observed.contentLength : null
  line.wireMs = observed.ms === undefined ? null : Math.round(observed.ms * 100) / 100
  if (isBatch && outcome === 'ok') {
    const multistatus = (integration.results[0] && integration.results[0].multistatus) || []
    line.multistatus = summarise(multistatus.map((r) => (r ? r.status : null)))
  }
  return line
}

async function main() {
  const job = readJob()
  for (const call of job.calls) {
    const line = await runCall(call, job)
    process.stdout.write(JSON.stringify(line) + '\n')
  }
  // A stalled call still holds its socket open: leave without waiting for it.
  process.exit(0)
}

main().catch((err) => {
  process.stderr.write(`driver.js: ${err && err.stack ? err.stack : err}\n`)
  process.exit(2)
})
