/**
 * The node's embedded nats-server is killed (`kill -9`) twice under full HTTP ingest load. Four
 * clients post batches of 1,000 readings back to back, each with an `Idempotency-Key`; on any
 * answer but 200 (503 while NATS is away, 409 while an earlier attempt holds the key) or a
 * broken connection, a client sends the same body with the same key again until it gets 200.
 * The node's supervisor restarts the server each time. Asserted: every record of every batch is
 * in the stream exactly once (no acknowledged record lost, none stored twice, though batches cut
 * short were sent again), ingest resumed after each kill, no answer was a 500, and both nodes'
 * processes stay within bounds of memory.
 */
import { afterAll, describe, expect, test } from 'vitest'
import { api } from '../helpers/federation.ts'
import { cleanupAll, type RunningNode, startNode, waitFor } from '../helpers/node-process.ts'
import { streamMessages } from '../helpers/transfer.ts'
import { logTail, memoryOf, natsPid, storedValues, tally } from './lib.ts'

afterAll(cleanupAll)

const CLIENTS = 4
const BATCH = 1_000
/** Load before the first kill, between the kills, and after the second. */
const PHASE_MS = 4_000

interface Client {
  batches: number
  attempts: number
  statuses: Map<string, number>
  /** Values of batches answered 200. */
  accepted: number[]
  /** When each 200 came. */
  okAt: number[]
}

async function runClient(node: RunningNode, id: number, until: () => boolean): Promise<Client> {
  const client: Client = { batches: 0, attempts: 0, statuses: new Map(), accepted: [], okAt: [] }
  const count = (status: string) => client.statuses.set(status, (client.statuses.get(status) ?? 0) + 1)
  while (!until()) {
    const first = id * 10_000_000 + client.batches * BATCH
    const key = `fault-${id}-${client.batches}`
    const t = Date.now()
    const body = JSON.stringify(
      Array.from({ length: BATCH }, (_, i) => ({
        kind: 'meter',
        rid: `c${id}m${i % 10}`,
        q: 'power',
        v: first + i,
        t: t + i,
      })),
    )
    client.batches += 1
    // The same body and key until it is stored: a client that keeps its promise to retry.
    const deadline = Date.now() + 60_000
    for (;;) {
      client.attempts += 1
      let status: string
      try {
        const response = await node.fetch('/v1/telemetry', {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'idempotency-key': key },
          body,
          signal: AbortSignal.timeout(20_000),
        })
        const answer = (await response.json().catch(() => null)) as {
          accepted?: number
          error?: string
        } | null
        status = response.status === 200 ? '200' : `${response.status} ${answer?.error ?? '(no reason)'}`
        if (response.status === 200 && answer?.accepted === BATCH) {
          count(status)
          for (let i = 0; i < BATCH; i++) client.accepted.push(first + i)
          client.okAt.push(Date.now())
          break
        }
      } catch (error) {
        status = `no answer: ${(error as Error).name}`
      }
      count(status)
      if (Date.now() > deadline) throw new Error(`batch ${key} not stored within 60 s (last: ${status})`)
      await Bun.sleep(100)
    }
  }
  return client
}

describe('a nats-server restart under full ingest load', () => {
  test('kill -9 of the embedded nats-server twice while four clients ingest with Idempotency-Key: every record once', async () => {
    const node = await startNode({ config: 'org = "Load"\n' })
    const memoryBefore = await memoryOf(node)
    let stop = false
    const started = Date.now()
    const clients = Array.from({ length: CLIENTS }, (_, id) => runClient(node, id, () => stop))

    const kills: { at: number; pid: number; newPid?: number; backMs?: number }[] = []
    for (let k = 0; k < 2; k++) {
      await Bun.sleep(PHASE_MS)
      const pid = (await natsPid(node))!
      process.kill(pid, 'SIGKILL')
      const kill = { at: Date.now(), pid } as (typeof kills)[number]
      kills.push(kill)
      await waitFor(
        async () => {
          const now = await natsPid(node)
          if (now === undefined || now === pid) return false
          kill.newPid = now
          return true
        },
        20_000,
        'the nats-server to be restarted',
      )
      kill.backMs = Date.now() - kill.at
    }
    await Bun.sleep(PHASE_MS)
    stop = true
    const results = await Promise.all(clients)
    const loadS = (Date.now() - started) / 1000
    const memoryAfter = await memoryOf(node)

    const accepted = results.flatMap((c) => c.accepted)
    const values = await storedValues(node)
    const inStream = await streamMessages(node, 'OE_TEL')
    const counts = tally(accepted, values)
    const statuses = new Map<string, number>()
    for (const c of results) for (const [s, n] of c.statuses) statuses.set(s, (statuses.get(s) ?? 0) + n)
    const okTimes = results.flatMap((c) => c.okAt).sort((a, b) => a - b)
    // Resumed: the first 200 answered after each server was back.
    const resumedMs = kills.map((kill) => {
      const first = okTimes.find((t) => t > kill.at + (kill.backMs ?? 0))
      return first === undefined ? undefined : first - kill.at
    })
    const status = await api<{ nats: { restarts?: number } }>(node, 'GET', '/v1/status')
    console.log(
      `[nats-server kill -9 ×2 under load] ${CLIENTS} clients, batches of ${BATCH}, ${loadS} s: ` +
        `${results.reduce((n, c) => n + c.batches, 0)} batches in ${results.reduce((n, c) => n + c.attempts, 0)} attempts, ` +
        `${accepted.length} records acknowledged (${Math.round(accepted.length / loadS)} records/s); answers ${JSON.stringify(Object.fromEntries(statuses))}; ` +
        `server back after ${kills.map((k) => k.backMs).join(', ')} ms, first 200 after the kill ${resumedMs.join(', ')} ms; ` +
        `restarts ${status.nats.restarts}; stream holds ${inStream}: lost ${counts.lost}, duplicated ${counts.duplicated}, ` +
        `unexpected ${counts.unexpected}; RSS node ${memoryBefore.node} → ${memoryAfter.node} MiB, nats-server ` +
        `${memoryBefore.nats} → ${memoryAfter.nats} MiB`,
    )
    if (counts.lost + counts.duplicated + counts.unexpected > 0) console.log(logTail('node', node, 60))

    // The kills struck mid-load: batches had to be sent again.
    expect(results.reduce((n, c) => n + c.attempts - c.batches, 0)).toBeGreaterThan(0)
    expect(accepted.length).toBeGreaterThan(20_000)
    // No client mistake and no server fault: only 200, 503 with a reason, 409 (key held) or a
    // connection the restart broke.
    for (const answer of statuses.keys())
      expect(answer).toMatch(/^(200|503 \w+Error|503 NotReady|409 IdempotencyKeyInUse|no answer: \w+)$/)
    expect(status.nats.restarts).toBe(2)
    for (const ms of resumedMs) {
      expect(ms, 'ingest resumed after the restart').toBeDefined()
      expect(ms!).toBeLessThan(15_000)
    }
    expect({ lost: counts.lost, duplicated: counts.duplicated, unexpected: counts.unexpected }).toEqual({
      lost: 0,
      duplicated: 0,
      unexpected: 0,
    })
    expect(inStream).toBe(accepted.length)
    // Memory: the node's RSS stays under 512 MiB through it all.
    expect(memoryAfter.node!).toBeLessThan(512)
  }, 90_000)
})
