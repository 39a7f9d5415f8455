/**
 * Ingest must not amplify memory: a few megabytes of tiny, worthless records (a million `{}` in
 * JSON, empty maps in CBOR) are refused for their count before they are parsed or validated one
 * by one, and the node's resident memory hardly moves. Measured on the node process itself
 * (/proc/<pid>/status), since that is what an operator's monitoring would see.
 */
import { readFile } from 'node:fs/promises'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { cleanupAll, type RunningNode, startNode } from '../helpers/node-process.ts'

const DEFAULT_MAX_RECORDS = 100_000
const MIB = 1024 * 1024
let node: RunningNode

beforeAll(async () => {
  node = await startNode({ config: 'org = "IngestMemory"\n' })
})
afterAll(cleanupAll)

/** The node's resident set size in bytes. */
async function rss(): Promise<number> {
  const status = await readFile(`/proc/${node.process.pid}/status`, 'utf8')
  const kb = Number(/^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1])
  expect(kb).toBeGreaterThan(0)
  return kb * 1024
}

const post = (body: Uint8Array | string, type: string) =>
  node.fetch('/v1/telemetry', { method: 'POST', body, headers: { 'content-type': type } })

/** A CBOR array header for `count` items (definite length), as RFC 8949 §3.1 writes it. */
function cborArrayHeader(count: number): Uint8Array {
  if (count < 24) return new Uint8Array([0x80 + count])
  if (count < 0x100) return new Uint8Array([0x98, count])
  if (count < 0x10000) return new Uint8Array([0x99, count >> 8, count & 0xff])
  return new Uint8Array([
    0x9a,
    (count >>> 24) & 0xff,
    (count >> 16) & 0xff,
    (count >> 8) & 0xff,
    count & 0xff,
  ])
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0))
  let offset = 0
  for (const part of parts) {
    out.set(part, offset)
    offset += part.length
  }
  return out
}

describe('records per request', () => {
  test('more records than api.max_records is 413 naming the limit; exactly the limit is read', async () => {
    const over = `[${Array(DEFAULT_MAX_RECORDS + 1)
      .fill('{}')
      .join(',')}]`
    const refused = await post(over, 'application/json')
    expect(refused.status).toBe(413)
    const body = (await refused.json()) as { error: string; message: string; maxRecords: number }
    expect(body.error).toBe('TooManyRecords')
    expect(body.maxRecords).toBe(DEFAULT_MAX_RECORDS)
    expect(body.message).toContain(String(DEFAULT_MAX_RECORDS))
    expect(body.message).toContain('api.max_records')

    const ndjson = Array(DEFAULT_MAX_RECORDS + 1)
      .fill('{}')
      .join('\n')
    expect((await post(ndjson, 'application/x-ndjson')).status).toBe(413)
    const cbor = concat(
      cborArrayHeader(DEFAULT_MAX_RECORDS + 1),
      new Uint8Array(DEFAULT_MAX_RECORDS + 1).fill(0xa0),
    )
    expect((await post(cbor, 'application/cbor')).status).toBe(413)
    const indefinite = concat(
      new Uint8Array([0x9f]),
      new Uint8Array(DEFAULT_MAX_RECORDS + 1).fill(0xa0),
      new Uint8Array([0xff]),
    )
    expect((await post(indefinite, 'application/cbor')).status).toBe(413)

    // At the limit the body is read: every record is rejected, with a bounded list of reasons.
    const atLimit = `[${Array(DEFAULT_MAX_RECORDS).fill('{}').join(',')}]`
    const answered = await post(atLimit, 'application/json')
    expect(answered.status).toBe(200)
    const result = (await answered.json()) as {
      accepted: number
      rejected: number
      errors: { index: number; reason: string }[]
      errorsTruncated?: boolean
    }
    expect(result.accepted).toBe(0)
    expect(result.rejected).toBe(DEFAULT_MAX_RECORDS)
    expect(result.errors.length).toBeLessThanOrEqual(1000)
    expect(result.errors[0]).toEqual({ index: 0, reason: 'kind: must be a string, got undefined' })
    expect(result.errorsTruncated).toBe(true)
    expect((await node.fetch('/readyz', { token: null })).status).toBe(200)
  })
})

describe('resident memory', () => {
  test('a 3 MB JSON body of a million {} and a 1 MB CBOR body of empty maps do not grow RSS by 150 MB', async () => {
    const before = await rss()
    const json = `[${Array(1_000_000).fill('{}').join(',')}]`
    expect(json.length).toBeGreaterThan(2.9e6)
    for (let round = 0; round < 3; round++) {
      const response = await post(json, 'application/json')
      expect(response.status).toBe(413)
      await response.arrayBuffer()
    }
    const cborMaps = new Uint8Array(MIB).fill(0xa0)
    for (const body of [
      concat(cborArrayHeader(cborMaps.length), cborMaps),
      concat(new Uint8Array([0x9f]), cborMaps, new Uint8Array([0xff])),
    ]) {
      const response = await post(body, 'application/cbor')
      expect(response.status).toBe(413)
      await response.arrayBuffer()
    }
    const after = await rss()
    expect((after - before) / MIB, `RSS ${before / MIB} → ${after / MIB} MiB`).toBeLessThan(150)
    expect((await node.fetch('/readyz', { token: null })).status).toBe(200)
  })
})
