/**
 * Leases: work that must happen once (an agreement's outgoing transfer, a plugin's polling) is
 * owned by one replica at a time through a key in KV `oe-leases`.
 *
 * - A lease is taken with a compare-and-set on the key's revision (`create` when the key is
 *   free, `update(key, value, revision)` to take over an expired one) and renewed the same way
 *   every `renewMs`. Its **fence** is the KV revision at acquisition; every renewal carries it.
 * - Expiry is judged by each contender on its own clock: a lease whose revision has not moved
 *   for `termMs` since this replica saw it is expired. No clocks are compared between hosts, and
 *   nats-server 2.10 (no per-message TTL) works as well as newer ones.
 * - The owner counts its term from the moment it *sent* its last successful renewal and stops
 *   `guardMs` before that term ends (its `signal` aborts; `valid()` turns false). A contender
 *   starts counting only when it sees that renewal, so a slow or partitioned owner has stopped
 *   before a new owner can start.
 *
 * @example
 * const leases = new LeaseManager({ replicaId, termMs: 3_000, renewMs: 1_000 }, { kv, logger })
 * await leases.start()
 * leases.acquire('transfer.abc', {
 *   onAcquired: (lease) => void work(lease.signal, () => lease.valid()),
 *   onLost: (reason) => log.warn({ reason }, 'lease lost'),
 * })
 */
import { randomUUID } from 'node:crypto'
import { JetStreamApiCodes, JetStreamApiError, type JetStreamClient } from '@nats-io/jetstream'
import { type KV, type KvEntry, Kvm } from '@nats-io/kv'
import { DataPlaneError } from './errors.ts'
import type { Logger } from './nats-server.ts'

export const LEASES_BUCKET = 'oe-leases'

/** A lease this replica held has gone (not renewed in time, taken over, or released). */
export class LeaseLostError extends DataPlaneError {
  override name = 'LeaseLostError'
  constructor(
    readonly lease: string,
    message = `the lease '${lease}' is no longer held by this replica`,
  ) {
    super(message)
  }
}

/** A lease name is not a valid KV key. */
export class LeaseNameError extends DataPlaneError {
  override name = 'LeaseNameError'
}

const LEASE_NAME = /^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/

export interface LeaseManagerInit {
  /** This replica's id: the `owner` written in the leases it holds. */
  replicaId: string
  /** How long a lease lasts without renewal. Default 3 s. */
  termMs?: number
  /** How often a held lease is renewed. Default 1 s. */
  renewMs?: number
  /** How long before its term the owner stops. Default a sixth of the term, at least 100 ms. */
  guardMs?: number
  /** How often contenders look for expired leases. Default 250 ms. */
  tickMs?: number
}

export interface LeaseManagerComponents {
  kv: KV
  logger: Logger
}

/** A lease held by this replica. */
export interface Lease {
  readonly name: string
  /** The KV revision at acquisition: a newer owner always has a higher one. */
  readonly fence: number
  /** Aborted when the lease is lost or released. */
  readonly signal: AbortSignal
  /** True while this replica may act as the owner (checked before each unit of work). */
  valid(now?: number): boolean
  /** Throws LeaseLostError unless `valid()`. */
  check(): void
}

/** A lease as `status` shows it. */
export interface LeaseInfo {
  name: string
  owner: string
  fence: number
  /** When the current owner took it (its clock). */
  acquiredAt: string
  /** How long the current owner has held it. */
  heldMs: number
  /** How long ago this replica saw it renewed. */
  renewedAgoMs: number
  mine: boolean
}

/** What a lease key holds (JSON). */
interface LeaseValue {
  owner: string
  /** Per process: tells a crashed earlier run of the same replica from a live one. */
  run: string
  /** The revision at acquisition; absent in the acquiring write itself (its own revision). */
  fence?: number
  acquired: number
  renewed: number
}

interface Observed {
  revision: number
  value: LeaseValue | undefined
  /** When this replica saw this revision (its clock). */
  seenAt: number
}

interface Contender {
  onAcquired: (lease: Lease) => void
  onLost?: (reason: string) => void
}

class HeldLease implements Lease {
  readonly controller = new AbortController()
  /** Revision of the last write this replica made to the key. */
  revision: number
  /** When the last successful renewal (or the acquisition) was sent. */
  renewedSentAt: number
  acquiredAt: number
  renewing = false
  timer: ReturnType<typeof setTimeout> | undefined

  constructor(
    readonly name: string,
    readonly fence: number,
    sentAt: number,
    private readonly validForMs: number,
  ) {
    this.revision = fence
    this.renewedSentAt = sentAt
    this.acquiredAt = sentAt
  }

  get signal(): AbortSignal {
    return this.controller.signal
  }

  get deadline(): number {
    return this.renewedSentAt + this.validForMs
  }

  valid(now = Date.now()): boolean {
    return !this.controller.signal.aborted && now < this.deadline
  }

  check(): void {
    if (!this.valid()) throw new LeaseLostError(this.name)
  }
}

/** How much later a replica takes a free lease for each lease it holds already. */
const BALANCE_MS_PER_LEASE = 50
const BALANCE_MAX_MS = 500

const encoder = new TextEncoder()
const decoder = new TextDecoder()

function decodeValue(entry: Pick<KvEntry, 'value' | 'operation'>): LeaseValue | undefined {
  if (entry.operation !== 'PUT') return undefined
  try {
    const value = JSON.parse(decoder.decode(entry.value)) as Partial<LeaseValue>
    if (typeof value.owner !== 'string' || typeof value.acquired !== 'number') return undefined
    return {
      owner: value.owner,
      run: typeof value.run === 'string' ? value.run : '',
      acquired: value.acquired,
      renewed: typeof value.renewed === 'number' ? value.renewed : value.acquired,
      ...(typeof value.fence === 'number' ? { fence: value.fence } : {}),
    }
  } catch {
    return undefined
  }
}

function isWrongSequence(error: unknown): boolean {
  if (error instanceof JetStreamApiError)
    return (
      error.code === JetStreamApiCodes.StreamWrongLastSequence ||
      error.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown
    )
  return /wrong last sequence/i.test((error as Error)?.message ?? '')
}

export class LeaseManager {
  readonly replicaId: string
  readonly termMs: number
  readonly renewMs: number
  private readonly guardMs: number
  private readonly tickMs: number
  /** This process: leases of this replica id written by an earlier run can be taken at once. */
  private readonly run = randomUUID()
  private readonly startedAt = Date.now()
  private readonly observed = new Map<string, Observed>()
  private readonly held = new Map<string, HeldLease>()
  private readonly contenders = new Map<string, Contender>()
  private readonly attempting = new Set<string>()
  /** When each lease this replica wants was first seen free (for `attempt`'s balancing). */
  private readonly takeableSince = new Map<string, number>()
  private timer: ReturnType<typeof setInterval> | undefined
  private watcher: { stop(): void } | undefined
  private started = false

  constructor(
    init: LeaseManagerInit,
    private readonly components: LeaseManagerComponents,
  ) {
    this.replicaId = init.replicaId
    this.termMs = init.termMs ?? 3_000
    this.renewMs = init.renewMs ?? 1_000
    this.guardMs = init.guardMs ?? Math.max(100, Math.floor(this.termMs / 6))
    this.tickMs = init.tickMs ?? 250
    if (this.renewMs >= this.termMs - this.guardMs)
      throw new DataPlaneError(
        `lease renewal every ${this.renewMs} ms does not fit a term of ${this.termMs} ms (guard ${this.guardMs} ms)`,
      )
  }

  /** The leases bucket (created with `replicas` when missing). */
  static openBucket(js: JetStreamClient, options: { replicas?: number } = {}): Promise<KV> {
    // Keys nobody renews (released, or their owners gone for good) are dropped after a while.
    return new Kvm(js).create(LEASES_BUCKET, { history: 1, replicas: options.replicas ?? 1, ttl: 3_600_000 })
  }

  async start(): Promise<void> {
    if (this.started) return
    this.started = true
    const watcher = await this.components.kv.watch()
    this.watcher = watcher
    void (async () => {
      try {
        for await (const entry of watcher) this.observe(entry.key, entry.revision, decodeValue(entry))
      } catch (error) {
        this.components.logger.warn({ err: (error as Error).message }, 'lease watch ended')
      }
    })()
    this.timer = setInterval(() => this.tick(), this.tickMs)
  }

  /** Release every lease held (others take over at once) and stop contending. */
  async stop(): Promise<void> {
    if (!this.started) return
    this.started = false
    if (this.timer) clearInterval(this.timer)
    this.timer = undefined
    this.watcher?.stop()
    this.contenders.clear()
    await Promise.allSettled([...this.held.keys()].map((name) => this.releaseHeld(name, 'replica stopping')))
  }

  /**
   * Contend for `name` until `release(name)`: `onAcquired` runs each time this replica takes it,
   * `onLost` each time it goes. Calling it again for the same name replaces the handlers.
   */
  acquire(name: string, handlers: Contender): { release: () => Promise<void> } {
    this.checkName(name)
    this.contenders.set(name, handlers)
    void this.attempt(name)
    return { release: () => this.release(name) }
  }

  /** One attempt to take `name` now; the lease is renewed until released or lost. */
  async tryAcquire(name: string): Promise<Lease | undefined> {
    this.checkName(name)
    const existing = this.held.get(name)
    if (existing?.valid()) return existing
    return this.take(name)
  }

  /** Stop contending for `name`; if held, give it up at once so another replica may take it. */
  async release(name: string): Promise<void> {
    this.contenders.delete(name)
    if (this.held.has(name)) await this.releaseHeld(name, 'released')
  }

  /** The lease if this replica holds it and may act on it now. */
  holding(name: string): Lease | undefined {
    const lease = this.held.get(name)
    return lease?.valid() ? lease : undefined
  }

  /** Whether `fence` is still the fence of `name`'s current owner in KV (read, not cached). */
  async verifyFence(name: string, fence: number): Promise<boolean> {
    const entry = await this.components.kv.get(name)
    if (!entry) return false
    const value = decodeValue(entry)
    if (!value) return false
    return (value.fence ?? entry.revision) === fence
  }

  /** Every lease in the bucket as this replica sees it, by name. */
  list(now = Date.now()): LeaseInfo[] {
    const leases: LeaseInfo[] = []
    for (const [name, seen] of this.observed) {
      const value = seen.value
      if (!value) continue
      const mine = this.held.get(name)
      leases.push({
        name,
        owner: value.owner,
        fence: value.fence ?? seen.revision,
        acquiredAt: new Date(value.acquired).toISOString(),
        heldMs: Math.max(0, now - value.acquired),
        renewedAgoMs: Math.max(0, now - (mine ? mine.renewedSentAt : seen.seenAt)),
        mine: mine?.valid(now) ?? false,
      })
    }
    return leases.sort((a, b) => a.name.localeCompare(b.name))
  }

  private checkName(name: string): void {
    if (!LEASE_NAME.test(name) || name.length > 255)
      throw new LeaseNameError(`'${name}' is not a lease name (dot-separated tokens of A-Z a-z 0-9 _ -)`)
  }

  private observe(name: string, revision: number, value: LeaseValue | undefined): void {
    const seen = this.observed.get(name)
    if (seen && seen.revision >= revision) return
    this.observed.set(name, { revision, value, seenAt: Date.now() })
  }

  private tick(): void {
    const now = Date.now()
    for (const lease of this.held.values()) {
      if (!lease.renewing && now - lease.renewedSentAt >= this.renewMs) void this.renew(lease)
    }
    for (const name of this.contenders.keys()) {
      if (!this.held.has(name)) void this.attempt(name)
    }
  }

  /** Whether the observed state of `name` lets this replica take it now. */
  private takeable(name: string, now: number): boolean {
    const seen = this.observed.get(name)
    if (!seen?.value) return true
    const value = seen.value
    // Written by this process and no longer held (released or lost), or by an earlier run of
    // this replica that died: nobody else holds it, and the compare-and-set settles any race.
    if (value.owner === this.replicaId && (value.run === this.run || value.renewed < this.startedAt))
      return true
    return now - seen.seenAt >= this.termMs
  }

  private async attempt(name: string): Promise<void> {
    if (!this.started || this.held.has(name) || this.attempting.has(name)) return
    const now = Date.now()
    if (!this.takeable(name, now)) {
      this.takeableSince.delete(name)
      return
    }
    // Spread the work: a replica holding many leases lets one holding fewer go first (up to
    // BALANCE_MAX_MS later), so free leases end up shared among the replicas.
    const since = this.takeableSince.get(name) ?? now
    this.takeableSince.set(name, since)
    if (now - since < Math.min(this.held.size * BALANCE_MS_PER_LEASE, BALANCE_MAX_MS)) return
    this.takeableSince.delete(name)
    const lease = await this.take(name)
    const contender = this.contenders.get(name)
    if (!lease) return
    if (!contender) {
      // Released while the attempt ran.
      await this.releaseHeld(name, 'released')
      return
    }
    try {
      contender.onAcquired(lease)
    } catch (error) {
      this.components.logger.warn(
        { lease: name, err: (error as Error).message },
        'lease work failed to start',
      )
    }
  }

  /** Compare-and-set the key to this replica: create when free, update over an expired owner. */
  private async take(name: string): Promise<HeldLease | undefined> {
    if (this.attempting.has(name)) return undefined
    this.attempting.add(name)
    const { kv, logger } = this.components
    try {
      // Twice at most: what this replica saw may lag behind the key (a release of its own, a
      // key dropped by the bucket's age limit); the second try works from what the key holds.
      for (let attempt = 1; ; attempt++) {
        if (!this.observed.has(name)) {
          // Not seen yet (the watch may be behind): look, so a live owner is not overlooked.
          const entry = await kv.get(name)
          if (entry) this.observe(name, entry.revision, decodeValue(entry))
        }
        const now = Date.now()
        if (!this.takeable(name, now)) return undefined
        const seen = this.observed.get(name)
        const value: LeaseValue = { owner: this.replicaId, run: this.run, acquired: now, renewed: now }
        const payload = encoder.encode(JSON.stringify(value))
        let revision: number
        try {
          revision = seen?.value
            ? await kv.update(name, payload, seen.revision)
            : await kv.create(name, payload)
        } catch (error) {
          if (!isWrongSequence(error)) {
            logger.debug({ lease: name, err: (error as Error).message }, 'lease not taken')
            return undefined
          }
          // Someone wrote it since we looked: look again (a live owner then gets a full term).
          const entry = await kv.get(name).catch(() => null)
          if (entry)
            this.observed.set(name, {
              revision: entry.revision,
              value: decodeValue(entry),
              seenAt: Date.now(),
            })
          else this.observed.delete(name)
          if (attempt >= 2) return undefined
          continue
        }
        const lease = new HeldLease(name, revision, now, this.termMs - this.guardMs)
        this.held.set(name, lease)
        this.observe(name, revision, value)
        this.arm(lease)
        logger.info({ lease: name, fence: revision, previous: seen?.value?.owner }, 'lease acquired')
        return lease
      }
    } finally {
      this.attempting.delete(name)
    }
  }

  /** Lose the lease by its deadline unless a renewal moves it. */
  private arm(lease: HeldLease): void {
    clearTimeout(lease.timer)
    lease.timer = setTimeout(
      () => {
        if (this.held.get(lease.name) === lease && !lease.valid())
          this.lose(lease, `not renewed within ${this.termMs - this.guardMs} ms`)
        else if (this.held.get(lease.name) === lease) this.arm(lease)
      },
      Math.max(0, lease.deadline - Date.now()),
    )
  }

  private async renew(lease: HeldLease): Promise<void> {
    const { kv, logger } = this.components
    lease.renewing = true
    const sentAt = Date.now()
    const value: LeaseValue = {
      owner: this.replicaId,
      run: this.run,
      fence: lease.fence,
      acquired: lease.acquiredAt,
      renewed: sentAt,
    }
    try {
      const revision = await kv.update(
        lease.name,
        encoder.encode(JSON.stringify(value)),
        lease.revision,
        Math.max(100, lease.deadline - sentAt),
      )
      if (this.held.get(lease.name) !== lease || !lease.valid()) return
      lease.revision = revision
      lease.renewedSentAt = sentAt
      this.observe(lease.name, revision, value)
      this.arm(lease)
    } catch (error) {
      if (this.held.get(lease.name) !== lease) return
      if (isWrongSequence(error)) {
        // Our previous renewal may have landed with its answer lost: then the key is still ours.
        const entry = await kv.get(lease.name).catch(() => null)
        const current = entry ? decodeValue(entry) : undefined
        if (
          entry &&
          current?.owner === this.replicaId &&
          current.run === this.run &&
          current.fence === lease.fence
        ) {
          lease.revision = entry.revision
          return
        }
        if (entry) this.observe(lease.name, entry.revision, current)
        this.lose(lease, `taken over by ${current?.owner ?? 'another replica'}`)
        return
      }
      logger.debug({ lease: lease.name, err: (error as Error).message }, 'lease renewal failed; retrying')
    } finally {
      lease.renewing = false
    }
  }

  private lose(lease: HeldLease, reason: string): void {
    if (this.held.get(lease.name) !== lease) return
    this.held.delete(lease.name)
    clearTimeout(lease.timer)
    lease.controller.abort(new LeaseLostError(lease.name, `lease '${lease.name}' lost: ${reason}`))
    this.components.logger.warn({ lease: lease.name, fence: lease.fence, reason }, 'lease lost')
    const contender = this.contenders.get(lease.name)
    try {
      contender?.onLost?.(reason)
    } catch (error) {
      this.components.logger.warn({ lease: lease.name, err: (error as Error).message }, 'lease onLost failed')
    }
  }

  private async releaseHeld(name: string, reason: string): Promise<void> {
    const lease = this.held.get(name)
    if (!lease) return
    this.held.delete(name)
    clearTimeout(lease.timer)
    lease.controller.abort(new LeaseLostError(name, `lease '${name}' ${reason}`))
    // Only our own write is deleted: a newer owner's stays.
    await this.components.kv.delete(name, { previousSeq: lease.revision }).catch(() => {})
    // What the key holds now is read again at the next attempt (the watch may lag behind).
    if (this.observed.get(name)?.revision === lease.revision) this.observed.delete(name)
    this.components.logger.debug({ lease: name, fence: lease.fence }, 'lease released')
  }
}
