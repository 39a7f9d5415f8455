/**
 * What the VTN keeps, in its JetStream KV bucket `oe-plugin-openadr-vtn-objects`: every object
 * under `<kind>.<id>`, and per controlled node resource the event that carries its limit under
 * `ctl.<rid>`. Answers come from memory; writes go to KV first and count once stored, so a
 * restart loses nothing that was acknowledged.
 *
 * Several replicas of the node may serve one bucket behind a load balancer (issue 15). Then:
 * - Each replica tells the others which keys it changed: a feed of numbered batches of keys,
 *   `feed.<replica>.b<n mod FEED_SLOTS>`, and its last batch number, `feed.<replica>.head`.
 *   Every SYNC_MS a replica reads the others' heads and re-reads the keys of the batches it has
 *   not seen (everything, when it fell further behind than the ring holds). Objects made through
 *   one replica are listed by the others within about SYNC_MS + FEED_FLUSH_MS.
 * - New objects get fresh random ids, so creates never collide. An existing object changes
 *   only from its newest revision (`change`): the replica announces the revision it is about to
 *   write under `claim.<slot>.<replica>`, gives way if another replica announced the same one
 *   within CLAIM_TTL_MS, checks that the bucket still holds the revision it started from, then
 *   writes; when it lost, it starts again from the newest version (a few times, then
 *   VtnConflictError). Names that must be unique are claimed the same way (`claimUnique`).
 *   The plugin store has no compare-and-set; announce-then-look stands in for it and needs only
 *   that a read after a write sees it (JetStream KV does), plus clocks within CLAIM_TTL_MS.
 */
import { createHash, randomBytes } from 'node:crypto'
import type { Logger } from '../../data-plane/index.ts'
import type { PluginStore } from '../api.ts'
import { VtnConflictError } from './errors.ts'
import { OBJECT_KINDS, type ObjectKind, type StoredObject } from './model.ts'

export interface ControlRecord {
  rid: string
  eventID: string
  resourceID: string
  venID: string
  /** Last command, for control_result events. */
  watts: number
  until?: number
  /** Set once the targeted VEN has read the event / reported on it. */
  delivered?: boolean
  /** Rises by one with each stored change. */
  revision?: number
}

/** What a change makes of the newest version: a new one, `'delete'`, or `undefined` for none. */
export type Change<T> = (
  current: T | undefined,
) => T | 'delete' | undefined | Promise<T | 'delete' | undefined>

export interface Committed<T> {
  before: T | undefined
  /** What is stored now (undefined when deleted or absent). */
  after: T | undefined
  /** Whether this call wrote (false: the change asked for nothing). */
  changed: boolean
}

export interface VtnStateInit {
  /** This replica's mark (`[a-z0-9]+`): names its feed and its claims. */
  replica: string
  /** How often the other replicas' feeds are read (default SYNC_MS). */
  syncIntervalMs?: number
}

export interface VtnStateComponents {
  store: PluginStore
  logger?: Logger
  /** Counts changes tried again because another replica changed the same key at once. */
  retried?: { inc(value?: number): void }
}

/** How often the other replicas' feeds are read. */
export const SYNC_MS = 250
/** Changed keys are gathered this long before a feed batch is written. */
export const FEED_FLUSH_MS = 50
/** Batches a feed keeps (a reader further behind reads everything again). */
const FEED_SLOTS = 64
/** Keys in one feed batch, at most. */
const BATCH_KEYS = 500
/** How often the list of feeds (replicas) is read again. */
const FEED_LIST_MS = 1_000
/** After start, the list is read on every sync while no other replica is known (replicas starting together). */
const EARLY_MS = 10_000
/** A claim counts this long. */
const CLAIM_TTL_MS = 5_000
/** Tries of a change that keeps meeting another replica's. */
const ATTEMPTS = 6
/** Reads in flight when everything is read. */
const READ_WIDTH = 32

const encoder = new TextEncoder()
const decoder = new TextDecoder()
const encode = (value: unknown) => encoder.encode(JSON.stringify(value))
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))
const compareIds = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0)
const OBJECT_KIND_SET = new Set<string>(OBJECT_KINDS)

/** A key's claim slot: a digest, so any key or name fits one key token. */
const slotOf = (name: string) => createHash('sha256').update(name, 'utf8').digest('hex').slice(0, 32)

interface Claim {
  revision: number
  /** Epoch ms; 0 when withdrawn. */
  at: number
}

interface FeedHead {
  batch: number
  /** Written by a clean stop: every change of that run is in the feed. */
  closed?: boolean
}

interface FeedBatch {
  batch: number
  keys: string[]
}

/** A store in memory, for harnesses without a data plane. */
export function createMemoryStore(bucket = 'memory'): PluginStore {
  const entries = new Map<string, Uint8Array>()
  const matches = (key: string, filter: string) => {
    if (filter === '>') return true
    const pattern = new RegExp(
      `^${filter
        .split('.')
        .map((token) =>
          token === '*' ? '[^.]+' : token === '>' ? '.+' : token.replace(/[^A-Za-z0-9]/g, '\\$&'),
        )
        .join('\\.')}$`,
    )
    return pattern.test(key)
  }
  return {
    bucket,
    get: async (key) => entries.get(key),
    put: async (key, value) => {
      entries.set(key, value)
    },
    delete: async (key) => {
      entries.delete(key)
    },
    keys: async (filter = '>') => [...entries.keys()].filter((key) => matches(key, filter)),
  }
}

type Stored = StoredObject | ControlRecord

export class VtnState {
  private readonly objects = new Map<ObjectKind, Map<string, StoredObject>>(
    OBJECT_KINDS.map((kind) => [kind, new Map()]),
  )
  /** Kinds whose map is out of id order (an object came from another replica). */
  private readonly unsorted = new Set<ObjectKind>()
  private readonly newest = new Map<ObjectKind, string>()
  private readonly controls = new Map<string, ControlRecord>()
  private lock: Promise<unknown> = Promise.resolve()
  /** Commits in flight per key: one at a time on this replica (the claim is per replica). */
  private readonly committing = new Map<string, Promise<unknown>>()
  private readonly replica: string
  // This replica's feed.
  private batch = 0
  private pending: string[] = []
  private flushTimer: ReturnType<typeof setTimeout> | undefined
  private flushing: Promise<void> = Promise.resolve()
  // The others' feeds: the last batch read of each.
  private readonly cursors = new Map<string, number>()
  private feeds: string[] = []
  private feedsListedAt = 0
  private syncTimer: ReturnType<typeof setInterval> | undefined
  private syncing: Promise<void> | undefined
  private syncAgain: Promise<void> | undefined
  private running = false
  private startedAt = 0

  constructor(
    private readonly components: VtnStateComponents,
    private readonly init: VtnStateInit = { replica: randomBytes(8).toString('hex') },
  ) {
    if (!/^[a-z0-9]+$/.test(init.replica))
      throw new TypeError(`replica mark '${init.replica}' is not [a-z0-9]+`)
    this.replica = init.replica
  }

  private get store(): PluginStore {
    return this.components.store
  }

  /** Read everything, then follow the other replicas' changes until `stop`. */
  async start(): Promise<void> {
    if (this.running) return
    const own = await this.read<FeedHead>(`feed.${this.replica}.head`)
    // After a crash, changes of the last moments may be missing from the feed: jump past the
    // ring so the other replicas read everything again.
    this.batch = own ? own.batch + (own.closed ? 0 : FEED_SLOTS + 1) : 0
    // Be seen by the others from now on.
    await this.store.put(`feed.${this.replica}.head`, encode({ batch: this.batch } satisfies FeedHead))
    await this.load()
    this.running = true
    this.startedAt = Date.now()
    this.syncTimer = setInterval(
      () =>
        void this.sync().catch((error) =>
          this.components.logger?.warn({ err: (error as Error).message }, 'openadr vtn: replica sync failed'),
        ),
      this.init.syncIntervalMs ?? SYNC_MS,
    )
    this.syncTimer.unref?.()
  }

  /** Stop following; write what is left of this replica's feed. */
  async stop(): Promise<void> {
    if (!this.running) return
    this.running = false
    if (this.syncTimer) clearInterval(this.syncTimer)
    this.syncTimer = undefined
    if (this.flushTimer) clearTimeout(this.flushTimer)
    this.flushTimer = undefined
    await this.syncing?.catch(() => {})
    try {
      await this.flush()
      await this.store.put(
        `feed.${this.replica}.head`,
        encode({ batch: this.batch, closed: true } satisfies FeedHead),
      )
    } catch {
      // The next start of this replica makes the others read everything.
    }
  }

  /**
   * Read the whole bucket (at start, or when a feed ran ahead of this replica). The others'
   * feed heads are read first, so nothing changed after that is missed.
   */
  async load(): Promise<void> {
    await this.listFeeds()
    const heads = await Promise.all(this.feeds.map((replica) => this.read<FeedHead>(`feed.${replica}.head`)))
    const before = new Map<string, Stored>()
    for (const [kind, objects] of this.objects)
      for (const [id, object] of objects) before.set(`${kind}.${id}`, object)
    for (const [rid, record] of this.controls) before.set(`ctl.${rid}`, record)
    const keys = (await this.store.keys('>')).filter((key) => this.isDataKey(key))
    const listed = new Set(keys)
    let next = 0
    await Promise.all(
      Array.from({ length: Math.min(READ_WIDTH, keys.length) }, async () => {
        while (next < keys.length) {
          const key = keys[next++]!
          const seen = this.cached(key)
          const value = await this.read<Stored>(key)
          if (this.cached(key) === seen) this.setCached(key, value)
        }
      }),
    )
    // Gone from the bucket, and not written here since the listing: gone.
    for (const [key, value] of before)
      if (!listed.has(key) && this.cached(key) === value) this.setCached(key, undefined)
    for (const [index, replica] of this.feeds.entries()) this.cursors.set(replica, heads[index]?.batch ?? 0)
  }

  /** Read the other replicas' changes now (coalesced: one read at a time, one queued). */
  sync(): Promise<void> {
    if (!this.syncing) {
      this.syncing = this.syncOnce().finally(() => {
        this.syncing = undefined
      })
      return this.syncing
    }
    // One is running: it may have started before the caller's write. Queue one more.
    this.syncAgain ??= this.syncing
      .catch(() => {})
      .then(() => {
        this.syncAgain = undefined
        return this.sync()
      })
    return this.syncAgain
  }

  /** Run local writes one after another. */
  exclusive<T>(work: () => Promise<T>): Promise<T> {
    const run = this.lock.then(work, work)
    this.lock = run.catch(() => {})
    return run
  }

  get(kind: ObjectKind, id: string): StoredObject | undefined {
    return this.objects.get(kind)!.get(id)
  }

  /** This replica's copy, or the bucket's when it has none yet (made through another replica just now). */
  async fetch(kind: ObjectKind, id: string): Promise<StoredObject | undefined> {
    const cached = this.get(kind, id)
    if (cached || !/^[A-Za-z0-9_-]{1,128}$/.test(id)) return cached
    const key = `${kind}.${id}`
    const stored = await this.read<StoredObject>(key)
    if (stored && this.cached(key) === undefined) this.setCached(key, stored)
    return this.get(kind, id)
  }

  /** Objects of a kind in creation order (ids are time-ordered, see newId). */
  list(kind: ObjectKind): StoredObject[] {
    if (this.unsorted.has(kind)) {
      const sorted = [...this.objects.get(kind)!].sort(([a], [b]) => compareIds(a, b))
      this.objects.set(kind, new Map(sorted))
      this.unsorted.delete(kind)
    }
    return [...this.objects.get(kind)!.values()]
  }

  count(kind: ObjectKind): number {
    return this.objects.get(kind)!.size
  }

  /** Store a new object (its id is new: no other replica writes the same key). */
  async create(object: StoredObject): Promise<StoredObject> {
    const key = `${object.kind}.${object.id}`
    const stored = { ...object, revision: 1 }
    await this.store.put(key, encode(stored))
    this.setCached(key, stored)
    this.changed(key)
    return stored
  }

  /** Change an object from its newest version (see the module comment). */
  changeObject(kind: ObjectKind, id: string, change: Change<StoredObject>): Promise<Committed<StoredObject>> {
    return this.commit(`${kind}.${id}`, change)
  }

  /** Drop an object without a claim (pruning old reports: a race only keeps one a while longer). */
  async forget(kind: ObjectKind, id: string): Promise<void> {
    const key = `${kind}.${id}`
    await this.store.delete(key)
    this.setCached(key, undefined)
    this.changed(key)
  }

  control(rid: string): ControlRecord | undefined {
    return this.controls.get(rid)
  }

  controlByEvent(eventID: string): ControlRecord | undefined {
    for (const record of this.controls.values()) if (record.eventID === eventID) return record
    return undefined
  }

  changeControl(rid: string, change: Change<ControlRecord>): Promise<Committed<ControlRecord>> {
    return this.commit(`ctl.${rid}`, change)
  }

  /**
   * Claim a name that must be unique across replicas (`program:<name>`, …) before checking it
   * against the objects: false when another replica claimed it within CLAIM_TTL_MS (it is
   * making that object now). On true, the other replicas' recent changes have been read.
   */
  async claimUnique(name: string): Promise<boolean> {
    const slot = slotOf(`unique:${name}`)
    for (let attempt = 1; attempt <= ATTEMPTS; attempt++) {
      const { won } = await this.announce(slot, 1)
      if (won) {
        // What another replica made under this name before its claim aged: read it now.
        if (this.feeds.length > 0) await this.sync()
        return true
      }
      await this.withdraw(slot)
      await sleep(backoff(attempt))
      // A replica that won keeps its claim: no use trying again. Both gave way: try again.
      if (await this.claimedByOthers(slot)) return false
    }
    return false
  }

  // ---- compare-and-set, by announcing the revision --------------------------------------------

  private commit<T extends Stored>(key: string, change: Change<T>): Promise<Committed<T>> {
    const previous = this.committing.get(key) ?? Promise.resolve()
    const run = previous.catch(() => {}).then(() => this.commitNow(key, change))
    const settled = run.catch(() => {})
    this.committing.set(key, settled)
    void settled.then(() => {
      if (this.committing.get(key) === settled) this.committing.delete(key)
    })
    return run
  }

  private async commitNow<T extends Stored>(key: string, change: Change<T>): Promise<Committed<T>> {
    let current = this.cached(key) as T | undefined
    if (current === undefined) {
      // Made through another replica a moment ago, perhaps: the bucket's copy is the newest.
      current = await this.read<T>(key)
      if (current !== undefined && this.cached(key) === undefined) this.setCached(key, current)
    }
    for (let attempt = 1; ; attempt++) {
      const next = await change(current)
      if (next === undefined) return { before: current, after: current, changed: false }
      const base = current?.revision ?? 0
      const slot = slotOf(key)
      const { won, claims } = await this.announce(slot, base + 1)
      const stored = await this.read<T>(key)
      const unchanged = (stored === undefined) === (current === undefined) && (stored?.revision ?? 0) === base
      if (won && unchanged) {
        let after: T | undefined
        if (next === 'delete') {
          await this.store.delete(key)
          // The object is gone: so are the claims on it.
          for (const claim of claims) await this.store.delete(claim).catch(() => {})
        } else {
          after = { ...next, revision: base + 1 }
          await this.store.put(key, encode(after))
        }
        this.setCached(key, after)
        this.changed(key)
        return { before: current, after, changed: true }
      }
      // Not written: take the claim back, or the other replica would give way to it too.
      await this.withdraw(slot)
      if (!unchanged) {
        // This replica's copy was behind: start again from the bucket's.
        this.setCached(key, stored)
        current = stored
      }
      if (attempt >= ATTEMPTS) throw new VtnConflictError(key)
      this.components.retried?.inc()
      if (!won) await sleep(backoff(attempt))
    }
  }

  /** Put this replica's claim on a slot, then look at the others' (Lamport: announce, then look). */
  private async announce(slot: string, revision: number): Promise<{ won: boolean; claims: string[] }> {
    const mine = `claim.${slot}.${this.replica}`
    const now = Date.now()
    await this.store.put(mine, encode({ revision, at: now } satisfies Claim))
    const claims = await this.store.keys(`claim.${slot}.*`)
    let won = true
    for (const key of claims) {
      if (key === mine) continue
      const claim = await this.read<Claim>(key)
      if (claim && claim.at > now - CLAIM_TTL_MS && claim.revision >= revision) won = false
    }
    return { won, claims }
  }

  private async withdraw(slot: string): Promise<void> {
    await this.store.put(`claim.${slot}.${this.replica}`, encode({ revision: 0, at: 0 } satisfies Claim))
  }

  /** Whether another replica holds a fresh claim on a slot. */
  private async claimedByOthers(slot: string): Promise<boolean> {
    for (const key of await this.store.keys(`claim.${slot}.*`)) {
      if (key === `claim.${slot}.${this.replica}`) continue
      const claim = await this.read<Claim>(key)
      if (claim && claim.at > Date.now() - CLAIM_TTL_MS) return true
    }
    return false
  }

  // ---- the feed: which keys this replica changed --------------------------------------------

  private changed(key: string): void {
    this.pending.push(key)
    if (this.flushTimer) return
    this.flushTimer = setTimeout(() => {
      this.flushTimer = undefined
      void this.flush().catch((error) =>
        this.components.logger?.warn(
          { err: (error as Error).message },
          'openadr vtn: change feed not written',
        ),
      )
    }, FEED_FLUSH_MS)
    this.flushTimer.unref?.()
  }

  private flush(): Promise<void> {
    const run = this.flushing.then(async () => {
      while (this.pending.length > 0) {
        const keys = [...new Set(this.pending.slice(0, BATCH_KEYS))]
        const batch = this.batch + 1
        await this.store.put(
          `feed.${this.replica}.b${batch % FEED_SLOTS}`,
          encode({ batch, keys } satisfies FeedBatch),
        )
        await this.store.put(`feed.${this.replica}.head`, encode({ batch } satisfies FeedHead))
        this.batch = batch
        this.pending.splice(0, BATCH_KEYS)
      }
    })
    this.flushing = run.catch(() => {})
    return run
  }

  private async listFeeds(): Promise<void> {
    const heads = await this.store.keys('feed.*.head')
    this.feeds = heads.map((key) => key.split('.')[1]!).filter((replica) => replica !== this.replica)
    this.feedsListedAt = Date.now()
  }

  private async syncOnce(): Promise<void> {
    const now = Date.now()
    const early = this.feeds.length === 0 && now - this.startedAt < EARLY_MS
    if (early || now - this.feedsListedAt >= FEED_LIST_MS) await this.listFeeds()
    let behind = false
    for (const replica of this.feeds) {
      const head = await this.read<FeedHead>(`feed.${replica}.head`)
      if (!head) continue
      const last = this.cursors.get(replica) ?? 0
      if (head.batch === last) continue
      if (head.batch < last || head.batch - last > FEED_SLOTS) {
        behind = true
        break
      }
      const keys = new Set<string>()
      for (let batch = last + 1; batch <= head.batch; batch++) {
        const read = await this.read<FeedBatch>(`feed.${replica}.b${batch % FEED_SLOTS}`)
        if (read?.batch !== batch) {
          behind = true
          break
        }
        for (const key of read.keys) keys.add(key)
      }
      if (behind) break
      for (const key of keys) {
        if (!this.isDataKey(key)) continue
        const seen = this.cached(key)
        const value = await this.read<Stored>(key)
        // Written here meanwhile, or older than ours: keep ours.
        if (this.cached(key) !== seen) continue
        if (value && seen && (value.revision ?? 0) < (seen.revision ?? 0)) continue
        this.setCached(key, value)
      }
      this.cursors.set(replica, head.batch)
    }
    if (behind) {
      this.components.logger?.info({}, 'openadr vtn: behind another replica, reading the whole store again')
      await this.load()
    }
  }

  // ---- memory ------------------------------------------------------------------------------

  private isDataKey(key: string): boolean {
    const dot = key.indexOf('.')
    const prefix = key.slice(0, dot)
    return dot > 0 && (prefix === 'ctl' || OBJECT_KIND_SET.has(prefix))
  }

  private cached(key: string): Stored | undefined {
    const dot = key.indexOf('.')
    const prefix = key.slice(0, dot)
    const rest = key.slice(dot + 1)
    if (prefix === 'ctl') return this.controls.get(rest)
    return this.objects.get(prefix as ObjectKind)?.get(rest)
  }

  private setCached(key: string, value: Stored | undefined): void {
    const dot = key.indexOf('.')
    const prefix = key.slice(0, dot)
    const rest = key.slice(dot + 1)
    if (prefix === 'ctl') {
      if (value) this.controls.set(rest, value as ControlRecord)
      else this.controls.delete(rest)
      return
    }
    const kind = prefix as ObjectKind
    const objects = this.objects.get(kind)
    if (!objects) return
    if (!value) {
      objects.delete(rest)
      return
    }
    if (!objects.has(rest)) {
      const newest = this.newest.get(kind)
      if (newest !== undefined && rest < newest) this.unsorted.add(kind)
      else this.newest.set(kind, rest)
    }
    objects.set(rest, value as StoredObject)
  }

  private async read<T>(key: string): Promise<T | undefined> {
    const value = await this.store.get(key)
    if (!value) return undefined
    try {
      return JSON.parse(decoder.decode(value)) as T
    } catch {
      this.components.logger?.warn({ key }, 'openadr vtn: unreadable value in the store, ignored')
      return undefined
    }
  }
}

/** Wait before trying again: growing, with jitter so two replicas part ways. */
function backoff(attempt: number): number {
  return (5 + Math.random() * 20) * 2 ** (attempt - 1)
}

let sequence = 0

/** A new object id: time-ordered, unique in this process, URL safe (`^[a-zA-Z0-9_-]*$`). */
export function newId(now = Date.now()): string {
  sequence = (sequence + 1) % 1_000_000
  const random = crypto.getRandomValues(new Uint8Array(6))
  return `${now.toString(36).padStart(9, '0')}-${sequence.toString(36).padStart(4, '0')}${Buffer.from(random).toString('hex')}`
}

/**
 * The id of an object the VTN makes itself at start (the control program): the same on every
 * replica, so replicas starting together make it once. Sorts before every newId.
 */
export function fixedId(name: string): string {
  return `000000000-${createHash('sha256').update(name, 'utf8').digest('hex').slice(0, 16)}`
}
