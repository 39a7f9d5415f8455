/**
 * What the VTN keeps, in its JetStream KV bucket `oe-plugin-openadr-vtn-objects`: every object
 * under `<kind>.<id>`, and per controlled node resource the event that carries its limit under
 * `ctl.<rid>`. All of it is read into memory at start (answers come from memory, writes go to KV
 * first and count once stored), so a restart loses nothing that was acknowledged. Writes are
 * serialised, which keeps name uniqueness checks honest.
 *
 * One VTN process owns the bucket: two nodes serving the same bucket would not see each other's
 * writes until restarted.
 */
import type { PluginStore } from '../api.ts'
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
}

const encoder = new TextEncoder()
const decoder = new TextDecoder()

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

export class VtnState {
  private readonly objects = new Map<ObjectKind, Map<string, StoredObject>>(
    OBJECT_KINDS.map((kind) => [kind, new Map()]),
  )
  private readonly controls = new Map<string, ControlRecord>()
  private lock: Promise<unknown> = Promise.resolve()

  constructor(private readonly store: PluginStore) {}

  async load(): Promise<void> {
    for (const key of await this.store.keys('>')) {
      const value = await this.store.get(key)
      if (!value) continue
      const parsed = JSON.parse(decoder.decode(value)) as StoredObject | ControlRecord
      if (key.startsWith('ctl.')) this.controls.set((parsed as ControlRecord).rid, parsed as ControlRecord)
      else {
        const object = parsed as StoredObject
        this.objects.get(object.kind)?.set(object.id, object)
      }
    }
    // Keep creation order (ids are time-ordered), whatever order the bucket listed keys in.
    for (const [kind, objects] of this.objects) {
      this.objects.set(kind, new Map([...objects].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))))
    }
  }

  /** Run writes one after another. */
  exclusive<T>(work: () => Promise<T>): Promise<T> {
    const run = this.lock.then(work, work)
    this.lock = run.catch(() => {})
    return run
  }

  get(kind: ObjectKind, id: string): StoredObject | undefined {
    return this.objects.get(kind)!.get(id)
  }

  /** Objects of a kind in creation order (ids are time-ordered, see newId). */
  list(kind: ObjectKind): StoredObject[] {
    return [...this.objects.get(kind)!.values()]
  }

  count(kind: ObjectKind): number {
    return this.objects.get(kind)!.size
  }

  async put(object: StoredObject): Promise<void> {
    await this.store.put(`${object.kind}.${object.id}`, encoder.encode(JSON.stringify(object)))
    this.objects.get(object.kind)!.set(object.id, object)
  }

  async delete(kind: ObjectKind, id: string): Promise<void> {
    await this.store.delete(`${kind}.${id}`)
    this.objects.get(kind)!.delete(id)
  }

  control(rid: string): ControlRecord | undefined {
    return this.controls.get(rid)
  }

  controlByEvent(eventID: string): ControlRecord | undefined {
    for (const record of this.controls.values()) if (record.eventID === eventID) return record
    return undefined
  }

  async putControl(record: ControlRecord): Promise<void> {
    await this.store.put(`ctl.${record.rid}`, encoder.encode(JSON.stringify(record)))
    this.controls.set(record.rid, record)
  }
}

let sequence = 0

/** A new object id: time-ordered, unique in this process, URL safe (`^[a-zA-Z0-9_-]*$`). */
export function newId(now = Date.now()): string {
  sequence = (sequence + 1) % 1_000_000
  const random = crypto.getRandomValues(new Uint8Array(6))
  return `${now.toString(36).padStart(9, '0')}-${sequence.toString(36).padStart(4, '0')}${Buffer.from(random).toString('hex')}`
}
