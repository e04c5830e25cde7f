#!/usr/bin/env node
'use strict'
// Benchmark: map a corpus of Segment events (JSON lines) into Dub request
// bodies with Segment's own mapping engine, @segment/actions-core's
// mapping-kit `transform`.
//
//   node map_segment.js CORPUS.jsonl [--seconds N] [--mode post-js|liquid]
//   node map_segment.js CORPUS.jsonl --dump N [--mode post-js|liquid]
//   node map_segment.js CORPUS.jsonl --whole [--mode post-js|liquid]
//
// Measured work per corpus line: JSON.parse, dispatch, transform(mapping,
// event), the post-processing of the mode (if any), JSON.stringify(body).
// --whole maps the file once, read in pieces, and writes one JSON line per
// event (what `bridge replay --dry-run` does), to be timed as a whole process.
// See README.md for what the two modes mean.

const fs = require('fs')
const path = require('path')
const { transform } = require('@segment/actions-core')

// ---------------------------------------------------------------------------
// Arguments

function usage(msg) {
  if (msg) process.stderr.write(`map_segment.js: ${msg}\n`)
  process.stderr.write(
    'usage: node map_segment.js CORPUS.jsonl [--seconds N | --dump N | --whole] [--mode post-js|liquid]\n'
  )
  process.exit(2)
}

function parseArgs(argv) {
  const opts = { corpus: null, seconds: 3, dump: null, mode: 'post-js', whole: false }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    const value = () => {
      const eq = a.indexOf('=')
      if (eq !== -1) return a.slice(eq + 1)
      if (i + 1 >= argv.length) usage(`${a} needs a value`)
      return argv[++i]
    }
    if (a === '--seconds' || a.startsWith('--seconds=')) {
      opts.seconds = Number(value())
      if (!(opts.seconds > 0)) usage('--seconds must be a positive number')
    } else if (a === '--dump' || a.startsWith('--dump=')) {
      opts.dump = Number(value())
      if (!Number.isInteger(opts.dump) || opts.dump < 0) usage('--dump must be a non-negative integer')
    } else if (a === '--mode' || a.startsWith('--mode=')) {
      opts.mode = value()
      if (opts.mode !== 'liquid' && opts.mode !== 'post-js') usage('--mode must be post-js or liquid')
    } else if (a === '--whole') {
      opts.whole = true
    } else if (a === '-h' || a === '--help') {
      usage()
    } else if (a.startsWith('-')) {
      usage(`unknown option ${a}`)
    } else if (opts.corpus === null) {
      opts.corpus = a
    } else {
      usage(`unexpected argument ${a}`)
    }
  }
  if (opts.corpus === null) usage('missing CORPUS.jsonl')
  return opts
}

function actionsCoreVersion() {
  // The package's "exports" hides package.json, so walk up from its entry point.
  let dir = path.dirname(require.resolve('@segment/actions-core'))
  for (;;) {
    const file = path.join(dir, 'package.json')
    if (fs.existsSync(file)) {
      const pkg = JSON.parse(fs.readFileSync(file, 'utf8'))
      if (pkg.name === '@segment/actions-core') return pkg.version
    }
    const parent = path.dirname(dir)
    if (parent === dir) return 'unknown'
    dir = parent
  }
}

// ---------------------------------------------------------------------------
// Mappings (mapping-kit directives)

const ZERO_DECIMAL = ['BIF', 'CLP', 'DJF', 'GNF', 'JPY', 'KMF', 'KRW', 'MGA', 'PYG', 'RWF', 'UGX', 'VND', 'VUV', 'XAF', 'XOF', 'XPF']
const PROCESSORS = ['stripe', 'shopify', 'polar', 'paddle', 'apple', 'revenuecat', 'dub', 'custom']

// The value at `p` when it is neither undefined nor null, else `otherwise`
// (or nothing: transform drops keys that resolve to undefined).
function pathOr(p, otherwise) {
  const opts = { exists: { '@path': p }, then: { '@path': p } }
  if (otherwise !== undefined) opts.else = otherwise
  return { '@if': opts }
}

// The value at `p` as a string (a number becomes its decimal text), when present.
function stringAt(p, otherwise) {
  const opts = { exists: { '@path': p }, then: { '@template': `{{${p.replace(/^\$\./, '')}}}` } }
  if (otherwise !== undefined) opts.else = otherwise
  return { '@if': opts }
}

const CLICK_ID = pathOr('$.context.traits.clickId', pathOr('$.integrations["Dub (Actions)"].dub_id'))
const CUSTOMER_EXTERNAL_ID = stringAt('$.userId')
const customerField = (name) => pathOr(`$.context.traits.${name}`, pathOr(`$.properties.${name}`))

const LEAD = {
  clickId: CLICK_ID,
  eventName: { '@path': '$.event' },
  customerExternalId: CUSTOMER_EXTERNAL_ID,
  customerName: customerField('name'),
  customerEmail: customerField('email'),
  customerAvatar: customerField('avatar'),
  mode: 'wait',
  metadata: pathOr('$.properties')
}

// --- liquid: everything inside mapping-kit. Arithmetic and the processor
// allow-list have no dedicated directive, so they use @liquid (rendered to
// text) and, for the amount, @json decode to turn the text back into a number.
function amountLiquid(p) {
  return (
    '{% assign c = properties.currency | upcase %}' +
    `{% assign z = "${ZERO_DECIMAL.join(',')}" | split: "," %}` +
    `{% if z contains c %}{{ ${p} | round }}{% else %}{{ ${p} | times: 100 | round }}{% endif %}`
  )
}
const amountFrom = (p) => ({ '@json': { mode: 'decode', value: { '@liquid': amountLiquid(p) } } })

const PROCESSOR_LIQUID =
  '{% assign p = properties.payment_processor | downcase %}' +
  `{% assign ok = "${PROCESSORS.join(',')}" | split: "," %}` +
  '{% if ok contains p %}{{ p }}{% else %}custom{% endif %}'

const CURRENCY = {
  '@if': {
    exists: { '@path': '$.properties.currency' },
    then: { '@case': { operator: 'lower', value: { '@path': '$.properties.currency' } } },
    else: { '@literal': 'usd' }
  }
}

function saleMapping(amount, paymentProcessor) {
  return {
    customerExternalId: CUSTOMER_EXTERNAL_ID,
    amount,
    currency: CURRENCY,
    invoiceId: stringAt('$.properties.order_id', { '@path': '$.messageId' }),
    paymentProcessor,
    eventName: { '@path': '$.event' },
    clickId: CLICK_ID,
    customerName: customerField('name'),
    customerEmail: customerField('email'),
    customerAvatar: customerField('avatar'),
    metadata: pathOr('$.properties')
  }
}

const SALE_LIQUID = saleMapping(
  {
    '@if': {
      exists: { '@path': '$.properties.revenue' },
      then: amountFrom('properties.revenue'),
      else: {
        '@if': { exists: { '@path': '$.properties.total' }, then: amountFrom('properties.total') }
      }
    }
  },
  { '@liquid': PROCESSOR_LIQUID }
)

// --- post-js: mapping-kit selects the raw amount and the lower-cased
// processor; plain JS then converts the amount and applies the allow-list.
const SALE_POST_JS = saleMapping(pathOr('$.properties.revenue', pathOr('$.properties.total')), {
  '@if': {
    exists: { '@path': '$.properties.payment_processor' },
    then: { '@case': { operator: 'lower', value: { '@path': '$.properties.payment_processor' } } },
    else: { '@literal': 'custom' }
  }
})

const ZERO_DECIMAL_LOWER = new Set(ZERO_DECIMAL.map((c) => c.toLowerCase()))
const PROCESSOR_SET = new Set(PROCESSORS)

function postProcessSale(body) {
  if (body.amount !== undefined) {
    // Float multiply then round, as other routers do (19.99 * 100 = 1998.9999999999998 -> 1999).
    const amount = ZERO_DECIMAL_LOWER.has(body.currency) ? Math.round(body.amount) : Math.round(body.amount * 100)
    if (Number.isFinite(amount)) body.amount = amount
    else delete body.amount
  }
  if (!PROCESSOR_SET.has(body.paymentProcessor)) body.paymentProcessor = 'custom'
  return body
}

// ---------------------------------------------------------------------------
// Dispatch

const LEAD_EVENTS = new Set(['Sign Up', 'Signed Up'])
const SALE_EVENT = 'Order Completed'

function hasClickId(event) {
  const traits = event.context && event.context.traits
  if (traits && traits.clickId !== undefined && traits.clickId !== null) return true
  const dub = event.integrations && event.integrations['Dub (Actions)']
  return Boolean(dub && dub.dub_id !== undefined && dub.dub_id !== null)
}

function makeMapper(mode) {
  const sale = mode === 'liquid' ? SALE_LIQUID : SALE_POST_JS
  const post = mode === 'liquid' ? null : postProcessSale
  // Returns the produced body (object) or null when the event is skipped.
  return function mapEvent(event) {
    if (event === null || typeof event !== 'object' || event.type !== 'track') return null
    const name = event.event
    if (LEAD_EVENTS.has(name)) {
      if (!hasClickId(event)) return null
      return transform(LEAD, event)
    }
    if (name === SALE_EVENT) {
      const body = transform(sale, event)
      return post ? post(body) : body
    }
    return null
  }
}

// ---------------------------------------------------------------------------
// Main

function loadLines(file) {
  const text = fs.readFileSync(file, 'utf8')
  return text.split('\n').filter((line) => line.trim() !== '')
}

function dump(lines, n, mapEvent) {
  let produced = 0
  const out = []
  for (let i = 0; i < lines.length && produced < n; i++) {
    let event
    try {
      event = JSON.parse(lines[i])
    } catch (e) {
      continue
    }
    const body = mapEvent(event)
    if (body === null) continue
    produced++
    out.push(JSON.stringify({ event: event.event, messageId: event.messageId, body }))
  }
  if (out.length) process.stdout.write(out.join('\n') + '\n')
}

function run(lines, seconds, mapEvent) {
  const n = lines.length
  let events = 0
  let bodies = 0
  let errors = 0
  let bytes = 0

  // One event: parse, dispatch, transform, stringify.
  const step = (line) => {
    let event
    try {
      event = JSON.parse(line)
      const body = mapEvent(event)
      if (body !== null) {
        bytes += JSON.stringify(body).length
        bodies++
      }
    } catch (e) {
      errors++
    }
  }

  if (n === 0) return { events: 0, bodies: 0, errors: 0, bytes: 0, elapsed: 0 }

  // Warm-up: one pass over the corpus, cut short after 1 s on a big corpus.
  const warmEnd = process.hrtime.bigint() + 1000000000n
  for (let i = 0; i < n; i++) {
    step(lines[i])
    if ((i & 1023) === 1023 && process.hrtime.bigint() >= warmEnd) break
  }
  bytes = 0
  bodies = 0
  errors = 0

  // Timed loop: passes over the corpus until `seconds` have elapsed; the clock
  // is read every 1024 events and at the end of each pass.
  const budget = BigInt(Math.round(seconds * 1e9))
  const start = process.hrtime.bigint()
  let now = start
  outer: for (;;) {
    for (let i = 0; i < n; i++) {
      step(lines[i])
      events++
      if ((events & 1023) === 0) {
        now = process.hrtime.bigint()
        if (now - start >= budget) break outer
      }
    }
    now = process.hrtime.bigint()
    if (now - start >= budget) break
  }
  return { events, bodies, errors, bytes, elapsed: Number(now - start) / 1e9 }
}

// The whole file once, read 1 MiB at a time (memory stays flat, as in the bridge's
// replay), one line out per event: the request a mapping builds, or null when none
// does. Output goes out in blocks of lines, as a buffered writer would.
const SALE_PATH = '/track/sale'
const LEAD_PATH = '/track/lead'

function whole(file, mapEvent) {
  const fd = fs.openSync(file, 'r')
  const chunk = Buffer.alloc(1 << 20)
  const decoder = new (require('string_decoder').StringDecoder)('utf8')
  let carry = ''
  let out = []
  let events = 0
  let bodies = 0
  const line = (text) => {
    if (text.trim() === '') return
    events++
    let event
    let request = null
    try {
      event = JSON.parse(text)
      const body = mapEvent(event)
      if (body !== null) {
        bodies++
        request = { method: 'POST', path: event.event === SALE_EVENT ? SALE_PATH : LEAD_PATH, body }
      }
    } catch (e) {
      event = {}
    }
    out.push(JSON.stringify({ messageId: event.messageId, event: event.event, request }))
  }
  for (;;) {
    const n = fs.readSync(fd, chunk, 0, chunk.length, null)
    if (n === 0) break
    const lines = (carry + decoder.write(chunk.subarray(0, n))).split('\n')
    carry = lines.pop()
    for (const text of lines) line(text)
    if (out.length) {
      fs.writeSync(1, out.join('\n') + '\n')
      out = []
    }
  }
  line(carry + decoder.end())
  if (out.length) fs.writeSync(1, out.join('\n') + '\n')
  fs.closeSync(fd)
  process.stderr.write(JSON.stringify({ events, bodies }) + '\n')
}

function main() {
  const opts = parseArgs(process.argv.slice(2))
  if (opts.whole) {
    whole(opts.corpus, makeMapper(opts.mode))
    return
  }
  let lines
  try {
    lines = loadLines(opts.corpus)
  } catch (e) {
    process.stderr.write(`map_segment.js: cannot read ${opts.corpus}: ${e.message}\n`)
    process.exit(1)
  }
  const mapEvent = makeMapper(opts.mode)

  if (opts.dump !== null) {
    dump(lines, opts.dump, mapEvent)
    return
  }

  const r = run(lines, opts.seconds, mapEvent)
  process.stdout.write(
    JSON.stringify({
      engine: 'segment-actions-core',
      version: actionsCoreVersion(),
      events: r.events,
      bodies: r.bodies,
      seconds: Math.round(r.elapsed * 1e6) / 1e6,
      events_per_second: r.elapsed > 0 ? r.events / r.elapsed : 0,
      mode: opts.mode,
      errors: r.errors,
      body_bytes: r.bytes
    }) + '\n'
  )
}

main()
