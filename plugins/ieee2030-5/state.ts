/**
 * What the client must remember across restarts and share between replicas, in the plugin's
 * JetStream KV bucket (`oe-plugin-csip-aus-state`, key `site.<rid>`): the site's LFDI and the
 * hrefs the server gave it (EndDevice, DER, MirrorUsagePoints) so a restart does not register
 * again; the events it knows with their randomised windows and the responses already sent; the
 * programs last read (so an outage right after a restart keeps the envelope); and the commands
 * last published (so a restart publishes only what changed). Key `owner` says which replica of
 * the node runs the client now (the others stand by and show it).
 */
import type { PluginStore } from '../api.ts'
import type { SiteCommand, SiteControl } from './normalise.ts'
import type { EventTrack, ProgramSnapshot, ResponseDue } from './scheduler.ts'

export interface SiteState {
  v: 1
  lfdi: string
  endDevice?: string
  der?: string
  mirrors: { site?: string; der?: string }
  /** Hrefs where each MirrorMeterReading's readings go (the server may give one per reading). */
  events: EventTrack[]
  programs: ProgramSnapshot[]
  published: Partial<Record<SiteCommand, SiteControl['payload']>>
  /** Server − host clock, ms, at the last Time read. */
  offsetMs?: number
  /** Resources subscribed to (or refused by the server: no point asking again), by href. */
  subscriptions?: Record<string, string>
  /** Responses due but not yet posted (a replica taking over posts them, once). */
  pending?: ResponseDue[]
}

/** Key `owner`: which replica runs the client now (written by it when it takes over). */
export interface OwnerRecord {
  fence: number
  host: string
  pid: number
  since: string
}

/** The subset of the plugin API's store the client uses (an in-memory one stands in when the host has none). */
export type KeyValueStore = Pick<PluginStore, 'get' | 'put' | 'delete' | 'keys'>

export function memoryStore(): KeyValueStore {
  const map = new Map<string, Uint8Array>()
  return {
    get: async (key) => map.get(key),
    put: async (key, value) => {
      map.set(key, value)
    },
    delete: async (key) => {
      map.delete(key)
    },
    keys: async () => [...map.keys()],
  }
}

export function emptySiteState(lfdi: string): SiteState {
  return { v: 1, lfdi, mirrors: {}, events: [], programs: [], published: {} }
}

export class CsipState {
  private writing: Promise<void> = Promise.resolve()
  /**
   * Hash of what each site's key holds (as read or last written): a poll that changed nothing
   * writes nothing, so the bucket sees one write per change rather than one per site and poll.
   */
  private readonly stored = new Map<string, bigint | number>()

  constructor(private readonly store: KeyValueStore) {}

  async load(rid: string): Promise<SiteState | undefined> {
    const bytes = await this.store.get(`site.${rid}`)
    this.stored.delete(rid)
    if (!bytes) return undefined
    try {
      const json = new TextDecoder().decode(bytes)
      const state = JSON.parse(json) as SiteState
      if (state.v !== 1) return undefined
      this.stored.set(rid, Bun.hash(json))
      return state
    } catch {
      return undefined
    }
  }

  /** Persist (serialised per client; the last call's content wins; unchanged content is not rewritten). */
  save(rid: string, state: SiteState): Promise<void> {
    const json = JSON.stringify(state)
    const hash = Bun.hash(json)
    if (this.stored.get(rid) === hash) return this.writing
    this.stored.set(rid, hash)
    const bytes = new TextEncoder().encode(json)
    const run = () =>
      this.store.put(`site.${rid}`, bytes).catch((error: unknown) => {
        // Not written: the next save writes it again.
        if (this.stored.get(rid) === hash) this.stored.delete(rid)
        throw error
      })
    this.writing = this.writing.then(run, run)
    return this.writing
  }

  async loadOwner(): Promise<OwnerRecord | undefined> {
    const bytes = await this.store.get('owner')
    if (!bytes) return undefined
    try {
      return JSON.parse(new TextDecoder().decode(bytes)) as OwnerRecord
    } catch {
      return undefined
    }
  }

  async saveOwner(owner: OwnerRecord): Promise<void> {
    await this.store.put('owner', new TextEncoder().encode(JSON.stringify(owner)))
  }

  async forget(rid: string): Promise<void> {
    this.stored.delete(rid)
    await this.store.delete(`site.${rid}`)
  }

  async flush(): Promise<void> {
    await this.writing.catch(() => {})
  }
}
