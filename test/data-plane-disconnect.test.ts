/**
 * A confirmed publish that is waiting for JetStream when the nats-server dies fails at once,
 * named, instead of after the 10 s publish timeout: its acks can never come on the new
 * connection. The caller's retry (HTTP 503, a transfer's new session) then starts as soon as the
 * server is back. Real nats-server, killed with SIGKILL; the node's supervisor restarts it.
 */
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { type DataPlane, type OutgoingMessage, PublishError } from '../data-plane/index.ts'
import { silentLogger } from '../node/logger.ts'
import { startDataPlane, type TestDataPlane } from './helpers/data-plane.ts'
import { cleanupAll, waitFor } from './helpers/node-process.ts'

let plane: TestDataPlane
let dir: string
let dataPlane: DataPlane

beforeAll(async () => {
  plane = await startDataPlane('oe-dp-disconnect-', silentLogger())
  ;({ dir, dataPlane } = plane)
})

afterAll(async () => {
  await plane?.stop()
  await cleanupAll()
})

const batch = (count: number, tag: string): OutgoingMessage[] =>
  Array.from({ length: count }, (_, i) => ({
    subject: `oe.tel.meter.${tag}${i % 50}.power`,
    payload: new Uint8Array(64).fill(i & 0xff),
  }))

describe('a confirmed publish when the nats-server dies', () => {
  test('fails within a few seconds with the reason, not at the 10 s timeout; publishing works again once the server is back', async () => {
    expect(await dataPlane.publishConfirmed(batch(100, 'warm'))).toBeGreaterThan(0)
    const pid = Number((await readFile(join(dir, 'nats', 'nats-server.pid'), 'utf8')).trim())
    const started = performance.now()
    const pending = dataPlane.publishConfirmed(batch(200_000, 'big')).then(
      () => undefined,
      (error: unknown) => error,
    )
    process.kill(pid, 'SIGKILL')
    const failure = await pending
    const failedAfterMs = performance.now() - started
    expect(failure).toBeInstanceOf(PublishError)
    expect((failure as Error).message).toMatch(
      /^the connection to NATS was lost before JetStream confirmed \d+ of 200000 messages$/,
    )
    // The publish timeout is 10 s; the loss is noticed when the socket closes.
    expect(failedAfterMs).toBeLessThan(5_000)

    // The supervisor restarts the server; the client reconnects; a new batch is confirmed.
    await waitFor(async () => dataPlane.isConnected(), 20_000, 'the data plane to reconnect')
    let stored = 0
    await waitFor(
      async () => {
        stored = await dataPlane.publishConfirmed(batch(100, 'after')).catch(() => 0)
        return stored > 0
      },
      20_000,
      'a confirmed publish after the restart',
    )
    expect(stored).toBeGreaterThan(0)
  })
})
