/**
 * What the VTN keeps, in its JetStream KV bucket `oe-plugin-openadr-vtn-objects`: every object
 * under `<kind>.<id>`, per controlled node resource the event that carries its limit under
 * `ctl.<rid>`, and per name that must be unique the object holding it under `names.<…>`.
 * Answers come from memory; writes go to KV first and count once stored, so a restart loses
 * nothing that was acknowledged.
 *
 * Several replicas of the node may serve one bucket behind a load balancer (issue 15). Then:
 * - Each replica follows every change to the bucket (`PluginStore.watch`, in place before the
 *   bucket is read at start, so no change falls between). Memory keeps each key's KV revision
 *   and never lets an older value replace a newer one, whichever of the watch, a read or this
 *   replica's own write brings it first.
 * - Writes are compare-and-set on the KV revision. A new object is `create`d (ids are fresh);
 *   a change is computed from the newest version known and `update`d from its revision; when
 *   another replica wrote first, it is computed again from the bucket's newest version (a few
 *   times, then VtnConflictError). A delete first replaces the version it was computed from by a
 *   tombstone (compare-and-set), then deletes the key.
 * - A unique name (a program's, a ven's, a VEN client's one ven, a ven's resource's) is held by
 *   the key `names.<what>.<base64url>` → `{ id }`, taken with `create`, so two replicas cannot
 *   give it to two objects. A new object's names are taken `pending` before it is written and
 *   confirmed (compare-and-set) after; a pending name whose object does not hold it yet may be
 *   taken over (its maker was slow, or died), and the maker, finding its confirm refused,
 *   deletes its object (VtnNameTakenError). A renamed object takes its new name before it is
 *   written. A name is free again when released (value `null`, compare-and-set, when its object
 *   is deleted or renamed), or when its object is gone or was changed after the name was taken
 *   without holding it (a release that never came). KV revisions of one bucket are one sequence,
 *   so "changed after" is a comparison of revisions. A released key stays (the store has no
 *   compare-and-set delete, and a plain delete could erase a claim made a moment later); the
 *   next object of that name takes it again.
 */
import { createHash } from 'node:crypto'
import type { Logger } from '../../data-plane/index.ts'
import type { PluginStore, PluginStoreChange, PluginStoreEntry } from '../api.ts'
import { OpenAdrError, VtnConflictError, VtnNameTakenError } from './errors.ts'
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
  /** The KV revision of this version (in memory only). */
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

/** A unique name a write takes: its key (`uniqueKey`) and what to answer when another object holds it. */
export interface UniqueName {
  key: string
  taken: string
}

export interface ChangeOptions {
  /** Names the new version takes (new, or changed by this write); computed again on each try. */
  claims?: (next: StoredObject, current: StoredObject | undefined) => UniqueName[]
}

export interface VtnStateComponents {
  store: PluginStore
  logger?: Logger
  /** Counts writes tried again because another replica wrote the same key first. */
  retried?: { inc(value?: number): void }
}

/** Tries of a write that keeps meeting another replica's. */
const ATTEMPTS = 6
/** Reads in flight when everything is read at start. */
const READ_WIDTH = 32

const encoder = new TextEncoder()
const decoder = new TextDecoder()
const encode = (value: unknown) => encoder.encode(JSON.stringify(value))
/** What a deleted object or a released name holds until its key goes (or for good, for names). */
const NOTHING = encode(null)
const compareIds = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0)
const OBJECT_KIND_SET = new Set<string>(OBJECT_KINDS)

/** The kinds of unique name, and the kind of object holding each. */
const NAME_KINDS = { program: 'program', ven: 'ven', 'ven-client': 'ven', resource: 'resource' } as const
export type NameKind = keyof typeof NAME_KINDS

/** A name's key: each part in base64url, so any text fits a key token (`[-_A-Za-z0-9]`, `=` for ''). */
export function uniqueKey(kind: NameKind, ...parts: string[]): string {
  return `names.${kind}.${parts.map((part) => Buffer.from(part, 'utf8').toString('base64url') || '=').join('.')}`
}

/** The unique names an object holds. */
export function uniqueNamesOf(object: StoredObject): string[] {
  const body = object.body
  switch (object.kind) {
    case 'program':
      return [uniqueKey('program', String(body.programName))]
    case 'ven':
      return [
        uniqueKey('ven', String(body.venName)),
        ...(object.clientID ? [uniqueKey('ven-client', object.clientID)] : []),
      ]
    case 'resource':
      return [uniqueKey('resource', String(body.venID), String(body.resourceName))]
    default:
      return []
  }
}

/** The value of a name key: the object holding it; `pending` until that object is written. */
interface NameHolder {
  id: string
  pending?: true
}

/** A store in memory, for harnesses without a data plane: one sequence of revisions, as a KV bucket. */
export function createMemoryStore(bucket = 'memory'): PluginStore {
  const entries = new Map<string, PluginStoreEntry>()
  const watchers = new Set<{ filter: string; onChange: (change: PluginStoreChange) => void }>()
  let sequence = 0
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
  const deliver = (onChange: (change: PluginStoreChange) => void, change: PluginStoreChange) =>
    queueMicrotask(() => {
      try {
        onChange(change)
      } catch {
        // A watcher's failure is its own (the host's store logs it).
      }
    })
  const write = (key: string, value: Uint8Array | undefined): number => {
    const revision = ++sequence
    if (value) entries.set(key, { value, revision })
    else entries.delete(key)
    // Delivered later and in order, as a watch over the network would.
    for (const watcher of watchers)
      if (matches(key, watcher.filter)) deliver(watcher.onChange, { key, value, revision })
    return revision
  }
  return {
    bucket,
    get: async (key) => entries.get(key)?.value,
    put: async (key, value) => {
      write(key, value)
    },
    delete: async (key) => {
      if (entries.has(key)) write(key, undefined)
    },
    keys: async (filter = '>') => [...entries.keys()].filter((key) => matches(key, filter)),
    getEntry: async (key) => {
      const entry = entries.get(key)
      return entry && { ...entry }
    },
    create: async (key, value) => (entries.has(key) ? undefined : write(key, value)),
    update: async (key, value, revision) =>
      entries.get(key)?.revision === revision ? write(key, value) : undefined,
    watch: async (filter, onChange, options = {}) => {
      if (options.signal?.aborted) return
      const watcher = { filter: filter ?? '>', onChange }
      if (options.initial) {
        const present = [...entries].filter(([key]) => matches(key, watcher.filter))
        present.sort(([, a], [, b]) => a.revision - b.revision)
        for (const [key, { value, revision }] of present) deliver(onChange, { key, value, revision })
      }
      watchers.add(watcher)
      options.signal?.addEventListener('abort', () => watchers.delete(watcher), { once: true })
    },
  }
}

type Stored = StoredObject | ControlRecord

/** The store with the operations replicas need (the host's always has them). */
type SharedStore = Required<PluginStore>

export class VtnState {
  private readonly objects = new Map<ObjectKind, Map<string, StoredObject>>(
    OBJECT_KINDS.map((kind) => [kind, new Map()]),
  )
  /** Kinds whose map is out of id order (an object came from another replica). */
  private readonly unsorted = new Set<ObjectKind>()
  private readonly newest = new Map<ObjectKind, string>()
  private readonly controls = new Map<string, ControlRecord>()
  /**
   * Revisions of keys deleted lately, so an older value (a read still in flight, the watch
   * catching up with this replica's own writes) does not bring them back.
   */
  private readonly tombstones = new Map<string, number>()
  /** Reads of the bucket in flight: while there are any, tombstones are kept. */
  private reading = 0
  /** The newest revision the watch brought. */
  private watched = 0
  private lock: Promise<unknown> = Promise.resolve()
  /** Writes in flight per key: one at a time on this replica (the others' are compare-and-set). */
  private readonly committing = new Map<string, Promise<unknown>>()
  private following: AbortController | undefined
  private readonly store: SharedStore

  constructor(private readonly components: VtnStateComponents) {
    const { store } = components
    if (!store.getEntry || !store.create || !store.update || !store.watch)
      throw new OpenAdrError(
        'openadr-vtn',
        `store '${store.bucket}' lacks getEntry, create, update or watch (the plugin host's has them)`,
      )
    this.store = store as SharedStore
  }

  /** Follow every change to the bucket, then read it all; idempotent. */
  async start(): Promise<void> {
    if (this.following) return
    const following = new AbortController()
    this.following = following
    // Started again: what memory held may have gone from the bucket meanwhile.
    for (const objects of this.objects.values()) objects.clear()
    this.unsorted.clear()
    this.newest.clear()
    this.controls.clear()
    this.tombstones.clear()
    this.watched = 0
    try {
      // The watch is in place before the bucket is read: a change made meanwhile comes through
      // either (or both; revisions sort them out).
      await this.store.watch('>', (change) => this.onWatched(change), { signal: following.signal })
      await this.load()
    } catch (error) {
      following.abort()
      this.following = undefined
      throw error
    }
  }

  /** Stop following the bucket. */
  async stop(): Promise<void> {
    this.following?.abort()
    this.following = undefined
  }

  /** Read the whole bucket (at start). */
  private async load(): Promise<void> {
    const keys = await this.store.keys('>')
    const data = keys.filter((key) => this.isDataKey(key))
    let next = 0
    this.reading += 1
    try {
      await Promise.all(
        Array.from({ length: Math.min(READ_WIDTH, data.length) }, async () => {
          while (next < data.length) {
            const key = data[next++]!
            const entry = await this.store.getEntry(key)
            if (entry) this.offer(key, this.decode(key, entry.value), entry.revision)
          }
        }),
      )
    } finally {
      this.readDone()
    }
    // The change feed and claims of the version before compare-and-set: nobody reads them now.
    const former = keys.filter((key) => key.startsWith('feed.') || key.startsWith('claim.'))
    if (former.length > 0)
      void (async () => {
        for (const key of former) await this.store.delete(key)
        this.components.logger?.info(
          { keys: former.length },
          'openadr vtn: former feed and claim keys deleted',
        )
      })().catch(() => {})
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
    await this.readFresh(`${kind}.${id}`)
    return this.get(kind, id)
  }

  /** Read the objects of a kind this replica has not seen yet (made through another replica just now). */
  async refresh(kind: ObjectKind): Promise<void> {
    for (const key of await this.store.keys(`${kind}.*`))
      if (this.cached(key) === undefined) await this.readFresh(key)
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

  /**
   * Store a new object, taking its unique names (VtnNameTakenError when another object holds
   * one). VtnConflictError when its key exists (a fixed id, made through another replica).
   */
  async create(object: StoredObject, claims: UniqueName[] = []): Promise<StoredObject> {
    const key = `${object.kind}.${object.id}`
    const taken: { name: UniqueName; revision: number }[] = []
    try {
      for (const name of claims) taken.push({ name, revision: await this.claim(name, object.id, true) })
    } catch (error) {
      await this.releaseAll(
        taken.map(({ name }) => name.key),
        object.id,
      )
      throw error
    }
    let revision: number | undefined
    try {
      revision = await this.store.create(key, this.encodeStored(object))
    } catch (error) {
      await this.releaseAll(
        taken.map(({ name }) => name.key),
        object.id,
      )
      throw error
    }
    // Made already (a fixed id): its names are its own, not to be released.
    if (revision === undefined) throw new VtnConflictError(key)
    const stored = { ...object, revision }
    this.offer(key, stored, revision)
    for (const { name, revision: claimed } of taken) {
      if (await this.confirm(name.key, object.id, claimed)) continue
      // Another object took the name over before this one was written: this one goes.
      await this.remove(key).catch(() => {})
      await this.releaseAll(
        taken.map(({ name: other }) => other.key),
        object.id,
      )
      throw new VtnNameTakenError(name.key, name.taken)
    }
    return stored
  }

  /** Change an object from its newest version (see the module comment). */
  changeObject(
    kind: ObjectKind,
    id: string,
    change: Change<StoredObject>,
    options: ChangeOptions = {},
  ): Promise<Committed<StoredObject>> {
    return this.commit(`${kind}.${id}`, change, options)
  }

  /** Drop an object as it is (pruning old reports: a race only keeps one a while longer). */
  async forget(kind: ObjectKind, id: string): Promise<void> {
    const key = `${kind}.${id}`
    const known = this.known(key)
    await this.store.delete(key)
    this.setCached(key, undefined)
    if (known > 0) this.tombstones.set(key, known)
  }

  control(rid: string): ControlRecord | undefined {
    return this.controls.get(rid)
  }

  controlByEvent(eventID: string): ControlRecord | undefined {
    for (const record of this.controls.values()) if (record.eventID === eventID) return record
    return undefined
  }

  changeControl(rid: string, change: Change<ControlRecord>): Promise<Committed<ControlRecord>> {
    return this.commit(`ctl.${rid}`, change, {})
  }

  // ---- compare-and-set -----------------------------------------------------------------------

  private commit<T extends Stored>(
    key: string,
    change: Change<T>,
    options: ChangeOptions,
  ): Promise<Committed<T>> {
    const previous = this.committing.get(key) ?? Promise.resolve()
    const run = previous.catch(() => {}).then(() => this.commitNow(key, change, options))
    const settled = run.catch(() => {})
    this.committing.set(key, settled)
    void settled.then(() => {
      if (this.committing.get(key) === settled) this.committing.delete(key)
    })
    return run
  }

  private async commitNow<T extends Stored>(
    key: string,
    change: Change<T>,
    options: ChangeOptions,
  ): Promise<Committed<T>> {
    const id = key.slice(key.indexOf('.') + 1)
    const kind = key.slice(0, key.indexOf('.')) as ObjectKind
    let current = this.cached(key) as T | undefined
    let revision = current?.revision ?? 0
    if (current === undefined) {
      // Made through another replica a moment ago, perhaps: read the bucket's.
      ;({ value: current, revision } = await this.readFresh<T>(key))
    }
    /** Names taken by this change (on any try), released at the end unless the stored version holds them. */
    const claimed = new Set<string>()
    let after: T | undefined
    try {
      for (let attempt = 1; ; attempt++) {
        const next = await change(current)
        if (next === undefined) {
          after = current
          return { before: current, after: current, changed: false }
        }
        if (next === 'delete') {
          if (current === undefined) return { before: undefined, after: undefined, changed: false }
          if (await this.deleteKey(key, revision)) {
            if (OBJECT_KIND_SET.has(kind)) await this.releaseAll(uniqueNamesOf(current as StoredObject), id)
            return { before: current, after: undefined, changed: true }
          }
        } else {
          for (const name of options.claims?.(next as StoredObject, current as StoredObject | undefined) ??
            []) {
            await this.claim(name, id, false)
            claimed.add(name.key)
          }
          const value = this.encodeStored(next)
          const written =
            revision === 0
              ? await this.store.create(key, value)
              : await this.store.update(key, value, revision)
          if (written !== undefined) {
            after = { ...next, revision: written }
            this.offer(key, after, written)
            if (current && OBJECT_KIND_SET.has(kind)) {
              const held = new Set(uniqueNamesOf(after as StoredObject))
              await this.releaseAll(
                uniqueNamesOf(current as StoredObject).filter((name) => !held.has(name)),
                id,
              )
            }
            return { before: current, after, changed: true }
          }
        }
        // Another replica wrote first: again from the bucket's newest version.
        if (attempt >= ATTEMPTS) throw new VtnConflictError(key)
        this.components.retried?.inc()
        ;({ value: current, revision } = await this.readFresh<T>(key))
      }
    } finally {
      if (claimed.size > 0) {
        // Not those the stored version holds (written by another try of the same change, say).
        const latest = (after ?? current) as StoredObject | undefined
        const held = new Set(latest && OBJECT_KIND_SET.has(kind) ? uniqueNamesOf(latest) : [])
        await this.releaseAll(
          [...claimed].filter((name) => !held.has(name)),
          id,
        )
      }
    }
  }

  /** Delete a key whatever its version (a new object that lost its name). */
  private async remove(key: string): Promise<void> {
    for (let attempt = 1; attempt <= ATTEMPTS; attempt++) {
      const { revision } = await this.readFresh(key)
      if (revision === 0 || (await this.deleteKey(key, revision))) return
    }
  }

  /** Delete a key if it is still at `revision`: a tombstone by compare-and-set, then the key. */
  private async deleteKey(key: string, revision: number): Promise<boolean> {
    const tombstone = await this.store.update(key, NOTHING, revision)
    if (tombstone === undefined) return false
    this.offer(key, undefined, tombstone)
    await this.store.delete(key).catch((error) =>
      // Read as absent all the same.
      this.components.logger?.warn({ key, err: (error as Error).message }, 'openadr vtn: tombstone left'),
    )
    return true
  }

  // ---- unique names --------------------------------------------------------------------------

  /**
   * Take a unique name for object `id` (see the module comment): its revision, or
   * VtnNameTakenError. `pending` for a new object, confirmed once it is written.
   */
  private async claim(name: UniqueName, id: string, pending: boolean): Promise<number> {
    const holder = encode(
      pending ? ({ id, pending: true } satisfies NameHolder) : ({ id } satisfies NameHolder),
    )
    const holderKind = NAME_KINDS[name.key.split('.')[1] as NameKind]
    for (let attempt = 1; attempt <= ATTEMPTS; attempt++) {
      const created = await this.store.create(name.key, holder)
      if (created !== undefined) return created
      const entry = await this.readName(name.key)
      if (!entry) continue // deleted meanwhile: create it again
      const current = entry.holder
      if (current?.id === id) {
        // This object's already (an earlier try, or the same fixed id on another replica). A
        // rename takes it again, so that its revision is newer than the object's.
        if (pending) return entry.revision
      } else if (current) {
        const key = `${holderKind}.${current.id}`
        const object = await this.store.getEntry(key)
        const stored = object && (this.decode(key, object.value) as StoredObject | undefined)
        const holds = stored !== undefined && uniqueNamesOf(stored).includes(name.key)
        if (current.pending && holds) {
          // Written, but its maker has not confirmed (it died, or is about to): confirm for it.
          await this.store.update(name.key, encode({ id: current.id } satisfies NameHolder), entry.revision)
          throw new VtnNameTakenError(name.key, name.taken)
        }
        // Held; or being renamed to it (taken before the object is written, so the older).
        if (!current.pending && (holds || (object && stored && object.revision < entry.revision)))
          throw new VtnNameTakenError(name.key, name.taken)
        // Free: pending and not written yet (its maker finds its confirm refused and gives way),
        // or its object is gone or changed since without it (a release that never came).
      }
      const updated = await this.store.update(name.key, holder, entry.revision)
      if (updated !== undefined) return updated
      this.components.retried?.inc()
    }
    throw new VtnConflictError(name.key)
  }

  /** A new object is written: make its pending name its own. False when another object took it over. */
  private async confirm(key: string, id: string, revision: number): Promise<boolean> {
    let expected = revision
    for (let attempt = 1; attempt <= ATTEMPTS; attempt++) {
      if ((await this.store.update(key, encode({ id } satisfies NameHolder), expected)) !== undefined)
        return true
      const entry = await this.readName(key)
      if (entry?.holder?.id !== id) return false
      if (!entry.holder.pending) return true
      expected = entry.revision
    }
    return false
  }

  /** Release names if `id` still holds them (best effort: an unreleased name is found free later). */
  private async releaseAll(keys: string[], id: string): Promise<void> {
    for (const key of keys) {
      try {
        for (let attempt = 1; attempt <= ATTEMPTS; attempt++) {
          const entry = await this.readName(key)
          if (entry?.holder?.id !== id) break
          if ((await this.store.update(key, NOTHING, entry.revision)) !== undefined) break
        }
      } catch (error) {
        this.components.logger?.warn({ key, err: (error as Error).message }, 'openadr vtn: name not released')
      }
    }
  }

  private async readName(
    key: string,
  ): Promise<{ holder: NameHolder | undefined; revision: number } | undefined> {
    const entry = await this.store.getEntry(key)
    if (!entry) return undefined
    const holder = this.parse(key, entry.value) as NameHolder | undefined
    return { holder: typeof holder?.id === 'string' ? holder : undefined, revision: entry.revision }
  }

  // ---- memory ------------------------------------------------------------------------------

  private onWatched(change: PluginStoreChange): void {
    if (change.revision > this.watched) this.watched = change.revision
    if (!this.isDataKey(change.key)) return
    this.offer(change.key, change.value && this.decode(change.key, change.value), change.revision)
    // The watch is past this delete: nothing older comes from it; no read in flight either.
    if (this.reading === 0) {
      const tombstone = this.tombstones.get(change.key)
      if (tombstone !== undefined && tombstone <= change.revision) this.tombstones.delete(change.key)
    }
  }

  /** The bucket's entry for a key, now (memory takes it unless it knows a newer one). */
  private async readFresh<T extends Stored>(
    key: string,
  ): Promise<{ value: T | undefined; revision: number }> {
    this.reading += 1
    try {
      const entry = await this.store.getEntry(key)
      if (!entry) return { value: undefined, revision: 0 }
      const value = this.decode(key, entry.value) as T | undefined
      this.offer(key, value, entry.revision)
      return { value: value && { ...value, revision: entry.revision }, revision: entry.revision }
    } finally {
      this.readDone()
    }
  }

  private readDone(): void {
    this.reading -= 1
    if (this.reading > 0 || this.tombstones.size === 0) return
    for (const [key, revision] of this.tombstones) if (revision <= this.watched) this.tombstones.delete(key)
  }

  /** The newest revision memory knows of a key (0: none). */
  private known(key: string): number {
    return this.cached(key)?.revision ?? this.tombstones.get(key) ?? 0
  }

  /** A version of a key (undefined: deleted), taken unless memory knows a newer one. */
  private offer(key: string, value: Stored | undefined, revision: number): void {
    if (revision <= this.known(key)) return
    if (value) {
      this.setCached(key, { ...value, revision })
      this.tombstones.delete(key)
    } else {
      this.setCached(key, undefined)
      this.tombstones.set(key, revision)
    }
  }

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

  /** The stored form: the revision is the KV entry's, not part of the value. */
  private encodeStored(value: Stored): Uint8Array {
    return encode({ ...value, revision: undefined })
  }

  /** A stored value (undefined: a tombstone, or unreadable). */
  private decode(key: string, value: Uint8Array): Stored | undefined {
    const parsed = this.parse(key, value)
    return parsed !== null && typeof parsed === 'object' ? (parsed as Stored) : undefined
  }

  private parse(key: string, value: Uint8Array): unknown {
    try {
      return JSON.parse(decoder.decode(value))
    } catch {
      this.components.logger?.warn({ key }, 'openadr vtn: unreadable value in the store, ignored')
      return undefined
    }
  }
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
