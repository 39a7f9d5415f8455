/**
 * `Idempotency-Key` on POST /v1/telemetry against a real node: a repeat stores nothing twice and
 * gets the first answer; the same key with another body is refused; and a request cut short by
 * the embedded nats-server dying under it, repeated once the server is back, leaves every record
 * stored exactly once.
 */
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { connect } from '@nats-io/transport-node'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { cleanupAll, type RunningNode, readSubject, startNode, waitFor } from '../helpers/node-process.ts'

const INGEST_TOKEN = 'ingest-token-idempotency-0123'
let node: RunningNode

beforeAll(async () => {
  node = await startNode({ config: `org = "Idem"\n[api]\ningest_tokens = ["${INGEST_TOKEN}"]\n` })
})
afterAll(cleanupAll)

const post = (body: string, key?: string, token?: string) =>
  node.fetch('/v1/telemetry', {
    method: 'POST',
    body,
    headers: { 'content-type': 'application/json', ...(key === undefined ? {} : { 'idempotency-key': key }) },
    ...(token === undefined ? {} : { token }),
  })

const readings = (rid: string, count: number, t = Date.now()) =>
  Array.from({ length: count }, (_, i) => ({ kind: 'meter', rid, q: 'power', v: i, t: t + i }))

describe('Idempotency-Key', () => {
  test('a repeat within the window stores nothing twice and gets the first answer', async () => {
    const body = JSON.stringify([
      ...readings('idem-1', 40),
      { kind: 'meter', rid: 'idem-1', q: 'soc', v: 300, t: Date.now() },
    ])
    const first = await post(body, 'order-42')
    expect(first.status).toBe(200)
    const answer = await first.json()
    expect(answer).toMatchObject({ accepted: 40, rejected: 1, errors: [{ index: 40 }] })
    expect(first.headers.get('idempotent-replayed')).toBeNull()
    for (let i = 0; i < 3; i++) {
      const again = await post(body, 'order-42')
      expect(again.status).toBe(200)
      expect(again.headers.get('idempotent-replayed')).toBe('true')
      expect(await again.json()).toEqual(answer)
    }
    expect(await readSubject(node, 'oe.tel.meter.idem-1.>', 300)).toHaveLength(40)
    // Without the key, the same body is stored again: the key is what asks for once.
    expect(await (await post(body)).json()).toMatchObject({ accepted: 40 })
    expect(await readSubject(node, 'oe.tel.meter.idem-1.>', 300)).toHaveLength(80)
  })

  test('the same key with another body is 422; keys are per token; a malformed key is 400', async () => {
    const body = JSON.stringify(readings('idem-2', 5))
    expect((await post(body, 'k-2')).status).toBe(200)
    const other = await post(JSON.stringify(readings('idem-2', 6)), 'k-2')
    expect(other.status).toBe(422)
    expect(await other.json()).toMatchObject({ error: 'IdempotencyKeyReused' })
    // Another client's key of the same name is its own.
    const theirs = await post(body, 'k-2', INGEST_TOKEN)
    expect(theirs.status).toBe(200)
    expect(theirs.headers.get('idempotent-replayed')).toBeNull()
    for (const key of ['', 'x'.repeat(256), 'with space', 'tab\there']) {
      const response = await post(body, key)
      expect(response.status, key).toBe(400)
      expect(await response.json()).toMatchObject({ error: 'InvalidIdempotencyKey' })
    }
    expect(await readSubject(node, 'oe.tel.meter.idem-2.>', 300)).toHaveLength(10)
  })

  test('concurrent repeats: one is stored, the others wait (409) or replay it', async () => {
    const body = JSON.stringify(readings('idem-3', 5_000))
    const statuses = (await Promise.all(Array.from({ length: 4 }, () => post(body, 'together')))).map(
      (r) => r.status,
    )
    expect(statuses.filter((status) => status === 200).length).toBeGreaterThanOrEqual(1)
    expect(statuses.every((status) => status === 200 || status === 409)).toBe(true)
    expect(await readSubject(node, 'oe.tel.meter.idem-3.>', 500)).toHaveLength(5_000)
  })

  test('a request cut short by a nats-server restart, repeated, stores every record exactly once', async () => {
    const count = 60_000
    const body = JSON.stringify(readings('idem-4', count))
    const pidFile = join(node.dataDir, 'nats', 'nats-server.pid')
    const natsPid = Number((await readFile(pidFile, 'utf8')).trim())
    expect(natsPid).toBeGreaterThan(0)
    // Watch the records go by, to kill the server once the first thousands are stored.
    const status = (await (await node.fetch('/v1/status')).json()) as { nats: { url: string } }
    const auth = JSON.parse(await readFile(join(node.dataDir, 'nats', 'auth.json'), 'utf8')) as {
      user: string
      password: string
    }
    const watcher = await connect({
      servers: status.nats.url,
      user: auth.user,
      pass: auth.password,
      reconnect: false,
    })
    let seen = 0
    const subscription = watcher.subscribe('oe.tel.meter.idem-4.power', {
      callback: () => {
        seen += 1
      },
    })
    await watcher.flush()
    const first = post(body, 'restart-me')
    await waitFor(() => seen >= 5_000, 30_000, 'the first records to be published')
    process.kill(natsPid, 'SIGKILL')
    subscription.unsubscribe()
    await watcher.close().catch(() => {})
    const cut = await first
    expect(cut.status).toBe(503)
    expect(await cut.json()).toMatchObject({ error: expect.stringMatching(/PublishError|NotConnectedError/) })
    // Cut short half-way: some of its records were stored, not all.
    await waitFor(
      async () => (await node.fetch('/readyz', { token: null })).status === 200,
      60_000,
      'NATS back',
    )
    const partial = (await readSubject(node, 'oe.tel.meter.idem-4.power', 1_000)).length
    expect(partial).toBeGreaterThan(0)
    expect(partial).toBeLessThan(count)
    // The node brings its nats-server back; the client repeats until it gets an answer.
    let answer: unknown
    await waitFor(
      async () => {
        const again = await post(body, 'restart-me')
        if (again.status !== 200) return false
        answer = await again.json()
        return true
      },
      60_000,
      'the repeat to be answered',
    )
    expect(answer).toEqual({ accepted: count, rejected: 0, errors: [] })
    const stored = await readSubject(node, 'oe.tel.meter.idem-4.power', 2_000)
    expect(new Set(stored.map((message) => message.data.v)).size).toBe(count)
    expect(stored).toHaveLength(count)
  }, 120_000)
})
