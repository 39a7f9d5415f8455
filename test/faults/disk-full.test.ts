/**
 * JetStream disk full: the node's JetStream store sits on a 32 MiB tmpfs (mounted over
 * `<data-dir>/nats/jetstream` before the node starts; root only). HTTP ingest runs at full speed
 * until the node refuses; then the filesystem grows (`mount -o remount,size=…`), and later a
 * file another program wrote fills it and is deleted again. Asserted, for each nats-server the
 * node may run (the one on PATH, and the newer one the build embeds when it is cached here):
 * - the refusal is 507 `InsufficientStorage` with a reason, answered at once (not a hang, never a
 *   500), for requests with and without an `Idempotency-Key`;
 * - every record answered 200 is in the stream, once, and nothing else is;
 * - after space returns, ingest succeeds again within seconds, with no restart of the node or its
 *   nats-server.
 */
import { spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, describe, expect, test } from 'vitest'
import { cleanupAll, ROOT, startNode, tempDir } from '../helpers/node-process.ts'
import { streamMessages } from '../helpers/transfer.ts'
import { logTail, memoryOf, natsPid, requireRoot, storedValues, tally } from './lib.ts'

const mounts: string[] = []

afterAll(async () => {
  await cleanupAll()
  for (const dir of mounts) spawnSync('umount', ['-l', dir])
})

function sh(args: string[]): string {
  const result = spawnSync(args[0]!, args.slice(1), { encoding: 'utf8', timeout: 10_000 })
  if (result.status !== 0) throw new Error(`${args.join(' ')}: ${result.stderr || result.error?.message}`)
  return result.stdout
}

/** A long rid, so each record takes a fair share of the store and the disk fills sooner. */
const rid = (i: number) => `meter-${i % 20}-${'x'.repeat(100)}`

const CACHED_SERVER = join(ROOT, '.cache', 'nats-server', 'nats-server')
const servers: [string, string | undefined][] = [['nats-server on PATH', undefined]]
if (existsSync(CACHED_SERVER)) servers.push(['nats-server the build embeds', CACHED_SERVER])

describe('JetStream disk full', () => {
  test.each(servers)(
    '%s: 507 with a reason, nothing acknowledged lost, recovery when space returns',
    async (label, serverBin) => {
      requireRoot('mounting a small filesystem for the JetStream store')
      const dataDir = await tempDir('oe-disk-')
      const store = join(dataDir, 'nats', 'jetstream')
      await mkdir(store, { recursive: true, mode: 0o700 })
      sh(['mount', '-t', 'tmpfs', '-o', 'size=32m,mode=0700', 'tmpfs', store])
      mounts.push(store)
      const node = await startNode({
        dataDir,
        config: `org = "Disk"\n${serverBin ? `[nats]\nserver_bin = ${JSON.stringify(serverBin)}\n` : ''}`,
      })
      const natsBefore = await natsPid(node)
      const memoryBefore = await memoryOf(node)

      const accepted = new Set<number>()
      const uncertain = new Set<number>()
      let next = 0
      const post = async (count: number, key?: string) => {
        const values = Array.from({ length: count }, (_, i) => next + i)
        next += count
        const started = Date.now()
        const response = await node.fetch('/v1/telemetry', {
          method: 'POST',
          headers: { 'content-type': 'application/json', ...(key ? { 'idempotency-key': key } : {}) },
          body: JSON.stringify(
            values.map((v) => ({ kind: 'meter', rid: rid(v), q: 'power', v, t: Date.now() })),
          ),
          signal: AbortSignal.timeout(30_000),
        })
        const body = (await response.json().catch(() => null)) as Record<string, unknown> | null
        if (response.status === 200 && body?.accepted === count) for (const v of values) accepted.add(v)
        else if (response.status !== 507) for (const v of values) uncertain.add(v)
        return { status: response.status, body, ms: Date.now() - started }
      }

      // Fill: full speed, one request after another, until the node refuses.
      const fillStarted = Date.now()
      let refusal: Awaited<ReturnType<typeof post>> | undefined
      const others: string[] = []
      while (Date.now() - fillStarted < 60_000) {
        const answer = await post(1_000)
        if (answer.status === 200) continue
        if (answer.status === 507) {
          refusal = answer
          break
        }
        others.push(`${answer.status} ${JSON.stringify(answer.body).slice(0, 200)} after ${answer.ms} ms`)
        if (others.length > 3) break
      }
      const fillS = (Date.now() - fillStarted) / 1000
      const df = sh(['df', '-B1', '--output=size,used,avail', store]).trim().split('\n')[1]
      // Refused again at once, with and without a key, while the store stays full.
      const again = [await post(1_000), await post(1_000, 'disk-full-1')]
      const readyWhileFull = (await node.fetch('/readyz')).status

      // Space returns: the filesystem grows. The next requests succeed, with no restart.
      sh(['mount', '-o', 'remount,size=64m', store])
      const grownAt = Date.now()
      let recoveredMs: number | undefined
      const afterGrow: number[] = []
      while (Date.now() - grownAt < 15_000) {
        const answer = await post(1_000, `after-grow-${next}`)
        afterGrow.push(answer.status)
        if (answer.status === 200) {
          recoveredMs ??= Date.now() - grownAt
          if (afterGrow.filter((s) => s === 200).length >= 5) break
        } else await Bun.sleep(200)
      }

      // Another program fills the disk: refused at once; it deletes its file: ingest resumes.
      const filler = join(store, 'filler')
      spawnSync('dd', ['if=/dev/zero', `of=${filler}`, 'bs=1M', 'count=64'], { timeout: 10_000 })
      const byFiller = await post(1_000)
      await rm(filler, { force: true })
      const afterFiller = await post(1_000)

      const memoryAfter = await memoryOf(node)
      const inStream = await streamMessages(node, 'OE_TEL')
      const values = await storedValues(node)
      const counts = tally(accepted, values)
      console.log(
        `[disk full, ${label}] filled 32 MiB in ${fillS} s: ${accepted.size} records accepted before the refusal ` +
          `(df size/used/avail ${df}); refusal ${refusal?.status} in ${refusal?.ms} ms: ${JSON.stringify(refusal?.body)}; ` +
          `again ${again.map((a) => `${a.status} in ${a.ms} ms`).join(', ')}; other answers ${others.join(' | ') || 'none'}; ` +
          `/readyz while full ${readyWhileFull}; after the tmpfs grew: ${afterGrow.join(',')} (first 200 after ${recoveredMs} ms); ` +
          `a filler file: ${byFiller.status} in ${byFiller.ms} ms, deleted: ${afterFiller.status}; stream holds ${inStream}, ` +
          `accepted ${accepted.size}, uncertain ${uncertain.size}: lost ${counts.lost}, duplicated ${counts.duplicated}, ` +
          `unexpected ${counts.unexpected}; nats-server pid ${natsBefore} → ${await natsPid(node)}; RSS node ` +
          `${memoryBefore.node} → ${memoryAfter.node} MiB, nats-server ${memoryBefore.nats} → ${memoryAfter.nats} MiB`,
      )
      if (!refusal || counts.lost + counts.duplicated > 0) console.log(logTail('node', node))

      expect(others, 'answers other than 200 and 507 while filling').toEqual([])
      expect(refusal, 'the node refused once the store was full').toBeDefined()
      expect(refusal!.body).toMatchObject({
        error: 'InsufficientStorage',
        message: expect.stringMatching(/MiB free/),
      })
      expect(refusal!.ms).toBeLessThan(2_000)
      expect(accepted.size).toBeGreaterThan(10_000)
      for (const answer of again) {
        expect(answer.status).toBe(507)
        expect(answer.body?.error).toBe('InsufficientStorage')
        expect(answer.ms).toBeLessThan(2_000)
      }
      expect(recoveredMs, `answers after the filesystem grew: ${afterGrow.join(',')}`).toBeDefined()
      expect(recoveredMs!).toBeLessThan(5_000)
      expect(byFiller.status).toBe(507)
      expect(afterFiller.status).toBe(200)
      // Nothing acknowledged lost, nothing twice, nothing unacknowledged stored.
      expect(uncertain.size).toBe(0)
      expect({ lost: counts.lost, duplicated: counts.duplicated, unexpected: counts.unexpected }).toEqual({
        lost: 0,
        duplicated: 0,
        unexpected: 0,
      })
      expect(inStream).toBe(accepted.size)
      // Recovered by itself: the same nats-server throughout.
      expect(await natsPid(node)).toBe(natsBefore)
    },
    120_000,
  )
})
