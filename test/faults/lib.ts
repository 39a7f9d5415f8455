/**
 * Shared pieces of the fault suite (test/faults/): what a case needs from the machine (root,
 * libfaketime), process memory, a multi-resource feeder whose every value is unique, and the
 * exactly-once count of what a consumer holds against what was stored.
 */
import { existsSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { DeliverPolicy, jetstream } from '@nats-io/jetstream'
import { decodeCbor } from '../../data-plane/index.ts'
import type { RunningNode } from '../helpers/node-process.ts'
import { meterRecord, natsOf } from '../helpers/transfer.ts'

/** Throw, saying why, when not root: these cases fail (never skip) where they cannot run. */
export function requireRoot(what: string): void {
  const uid = process.getuid?.()
  if (uid !== 0)
    throw new Error(
      `fault test cannot run: ${what} needs root and this runs as uid ${uid} (CI runs \`bash .ci/run\` as root)`,
    )
}

/** libfaketime's preload library (Debian package `faketime`), or undefined. */
export function faketimeLibrary(): string | undefined {
  return [
    '/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1',
    '/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1',
    '/usr/lib/faketime/libfaketime.so.1',
    '/usr/local/lib/faketime/libfaketime.so.1',
  ].find((path) => existsSync(path))
}

/**
 * Environment that runs a process (and its children) on a shifted wall clock: `offset` as
 * libfaketime takes it (`+5m`, `-300s`). The monotonic clock is left alone, so timers and
 * timeouts run at their usual pace; the embedded nats-server (Go, no libc clock calls) keeps the
 * host's time.
 */
export function shiftedClockEnv(offset: string): Record<string, string> {
  const library = faketimeLibrary()
  if (!library)
    throw new Error(
      'fault test cannot run: libfaketime is not installed (Debian: `apt-get install faketime`; scripts/setup can install it)',
    )
  return { LD_PRELOAD: library, FAKETIME: offset, DONT_FAKE_MONOTONIC: '1', FAKETIME_DONT_RESET: '1' }
}

/** Resident memory of a process in MiB (VmRSS), or undefined when it is gone. */
export async function rssMiB(pid: number | undefined): Promise<number | undefined> {
  if (!pid) return undefined
  const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '')
  const kb = /^VmRSS:\s+(\d+)\s+kB/m.exec(status)?.[1]
  return kb === undefined ? undefined : Math.round(Number(kb) / 102.4) / 10
}

/** The pid of a node's embedded nats-server, from its pid file. */
export async function natsPid(node: RunningNode): Promise<number | undefined> {
  const pid = Number(
    (await readFile(join(node.dataDir, 'nats', 'nats-server.pid'), 'utf8').catch(() => '')).trim(),
  )
  return Number.isInteger(pid) && pid > 0 ? pid : undefined
}

/** RSS of a node process and of its nats-server. */
export async function memoryOf(node: RunningNode): Promise<{ node?: number; nats?: number }> {
  return { node: await rssMiB(node.process.pid), nats: await rssMiB(await natsPid(node)) }
}

/** Counts of one value set against another: what a consumer holds against what should be there. */
export interface Tally {
  expected: number
  held: number
  lost: number
  duplicated: number
  unexpected: number
}

/** `held` against `expected`: lost, duplicated (extra copies) and unexpected values. */
export function tally(expected: Iterable<number>, held: readonly number[]): Tally {
  const want = new Set(expected)
  const counts = new Map<number, number>()
  for (const v of held) counts.set(v, (counts.get(v) ?? 0) + 1)
  let lost = 0
  for (const v of want) if (!counts.has(v)) lost += 1
  let duplicated = 0
  let unexpected = 0
  for (const [v, n] of counts) {
    duplicated += n - 1
    if (!want.has(v)) unexpected += 1
  }
  return { expected: want.size, held: held.length, lost, duplicated, unexpected }
}

/** The last lines of a node's log that are not debug lines, for a failure's message. */
export function logTail(label: string, node: RunningNode, lines = 40): string {
  const kept = node
    .stderr()
    .split('\n')
    .filter((line) => line.trim() !== '' && !line.includes('"level":20'))
  return `── ${label} (${node.dataDir}) ──\n${kept.slice(-lines).join('\n')}`
}

/** Every value `v` in one of a node's streams (default the telemetry stream), read from its JetStream. */
export async function storedValues(node: RunningNode, stream = 'OE_TEL'): Promise<number[]> {
  const nc = await natsOf(node)
  try {
    const consumer = await jetstream(nc).consumers.get(stream, { deliver_policy: DeliverPolicy.All })
    const values: number[] = []
    for (;;) {
      const batch = await consumer.fetch({ max_messages: 10_000, expires: 1_000 })
      let count = 0
      for await (const msg of batch) {
        count += 1
        values.push((decodeCbor(msg.data) as { v: number }).v)
      }
      if (count === 0) return values
    }
  } finally {
    await nc.close()
  }
}

/**
 * Meter power readings with unique increasing values (`meterRecord`), posted one request at a
 * time until `stop()`: what the node answered 200 for is `accepted`, what got another answer or
 * none is `uncertain` (stored or not).
 */
export class TimedFeeder {
  readonly accepted = new Set<number>()
  readonly uncertain = new Set<number>()
  readonly errors: string[] = []
  private next = 0
  private stopped = false
  private running: Promise<void> | undefined

  constructor(
    private readonly node: RunningNode,
    private readonly options: { batch: number; pauseMs: number },
  ) {}

  get sent(): number {
    return this.next
  }

  start(): this {
    this.running ??= this.loop()
    return this
  }

  async stop(): Promise<void> {
    this.stopped = true
    await this.running
  }

  private async loop(): Promise<void> {
    const { batch, pauseMs } = this.options
    while (!this.stopped) {
      const values = Array.from({ length: batch }, (_, i) => this.next + i)
      this.next += batch
      let ok = false
      try {
        const response = await this.node.fetch('/v1/telemetry', {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(values.map(meterRecord)),
          signal: AbortSignal.timeout(20_000),
        })
        const text = await response.text()
        if (response.ok && (JSON.parse(text) as { accepted: number }).accepted === batch) ok = true
        else this.errors.push(`${response.status} ${text.slice(0, 200)}`)
      } catch (error) {
        this.errors.push((error as Error).message)
      }
      for (const v of values) (ok ? this.accepted : this.uncertain).add(v)
      await Bun.sleep(pauseMs)
    }
  }
}

/** RSS of nodes' processes and their nats-servers, sampled every `everyMs` until `stop()`. */
export class MemorySampler {
  readonly samples: { at: number; values: Record<string, number | undefined> }[] = []
  private timer: ReturnType<typeof setInterval> | undefined

  constructor(private readonly nodes: Record<string, RunningNode>) {}

  start(everyMs = 1_000): this {
    const take = async () => {
      const values: Record<string, number | undefined> = {}
      for (const [label, node] of Object.entries(this.nodes)) {
        const memory = await memoryOf(node)
        values[label] = memory.node
        values[`${label} nats`] = memory.nats
      }
      this.samples.push({ at: Date.now(), values })
    }
    void take()
    this.timer = setInterval(() => void take(), everyMs)
    return this
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer)
  }

  /** Highest sample per process, from `since` on. */
  max(since = 0): Record<string, number> {
    const out: Record<string, number> = {}
    for (const sample of this.samples.filter((s) => s.at >= since))
      for (const [label, value] of Object.entries(sample.values))
        if (value !== undefined) out[label] = Math.max(out[label] ?? 0, value)
    return out
  }

  /** The last sample at or before `at`. */
  at(at: number): Record<string, number | undefined> {
    return this.samples.filter((s) => s.at <= at).at(-1)?.values ?? {}
  }
}
