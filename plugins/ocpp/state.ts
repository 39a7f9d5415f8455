/**
 * What the CSMS must remember across restarts and share between replicas, in the plugin's
 * JetStream KV bucket (`oe-plugin-ocpp-state`): open charging sessions (a station may report
 * the end of a session that another replica, or this one before a restart, saw start), the next
 * OCPP 1.6 transaction id, and the latest power limit per EVSE/station (sent again when the
 * station reconnects, wherever it reconnects).
 *
 * Keys: `txid` (the next 1.6 transaction id), `session.<station>.<transaction>`,
 * `limit.<station>.<evse>`; station ids and transaction ids are escaped into key tokens
 * (`keyToken`). Only the replica that holds a station's socket writes that station's sessions,
 * so they are cached per attached station and read back from the KV when a station connects.
 *
 * A `state.json` left by an earlier version in the plugin's data folder is moved into the KV
 * once and renamed `state.json.migrated`.
 */
import { readFile, rename } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from '../../data-plane/index.ts'
import type { PluginStore } from '../api.ts'

export interface SessionState {
  station: string
  /** EVSE number (1.6 connector id). */
  evse: number
  transactionId: string
  startedAt: number
  meterStartWh?: number
  /** Latest energy register seen during the session. */
  lastEnergyWh?: number
  /** The driver's token (1.6 idTag, 2.0.1 idToken) the session was authorised with. */
  idTag?: string
  tokenType?: string
}

export interface LimitState {
  station: string
  /** 0 for the station itself. */
  evse: number
  watts: number
  until?: number
  source?: string
}

/** The file earlier versions kept in `<data-dir>/plugins/ocpp/`. */
interface StateFile {
  v: 1
  nextTransactionId: number
  sessions: SessionState[]
  limits: LimitState[]
}

/** The key-value store the state lives in (the plugin's KV bucket, or memory in harnesses). */
export type StateStore = Pick<PluginStore, 'get' | 'put' | 'delete' | 'keys'>

export interface OcppStateInit {
  /** The plugin's data folder, where a legacy `state.json` may be. */
  dir: string
}

export interface OcppStateComponents {
  logger: Logger
  store: StateStore
}

/** A KV key token for any text: `[-_A-Za-z0-9]` as is, every other byte as `=XX`. */
export function keyToken(text: string): string {
  let out = ''
  for (const byte of new TextEncoder().encode(text)) {
    const char = String.fromCharCode(byte)
    out += /[-_A-Za-z0-9]/.test(char) ? char : `=${byte.toString(16).toUpperCase().padStart(2, '0')}`
  }
  return out
}

const TXID_KEY = 'txid'
const MAX_TRANSACTION_ID = 2_147_483_647
const sessionKey = (station: string, transactionId: string) =>
  `session.${keyToken(station)}.${keyToken(transactionId)}`
const limitKey = (station: string, evse: number) => `limit.${keyToken(station)}.${evse}`
const memoryKey = (station: string, id: string | number) => `${station}\u0000${id}`

const encode = (value: unknown) => new TextEncoder().encode(JSON.stringify(value))
const decode = <T>(bytes: Uint8Array): T => JSON.parse(new TextDecoder().decode(bytes)) as T

export class OcppState {
  private readonly legacyPath: string
  /** Sessions and limits of the stations attached here (and limits set here). */
  private readonly sessions = new Map<string, SessionState>()
  private readonly limits = new Map<string, LimitState>()
  private allocating: Promise<unknown> = Promise.resolve()
  /** Writes in flight (flush() waits for them). */
  private readonly writing = new Set<Promise<void>>()

  constructor(
    init: OcppStateInit,
    private readonly components: OcppStateComponents,
  ) {
    this.legacyPath = join(init.dir, 'state.json')
  }

  /** Move a legacy `state.json` into the KV (once: the file is renamed afterwards). */
  async load(): Promise<void> {
    let text: string
    try {
      text = await readFile(this.legacyPath, 'utf8')
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return
      throw error
    }
    const { store, logger } = this.components
    let state: Partial<StateFile>
    try {
      state = JSON.parse(text) as StateFile
    } catch (error) {
      // A damaged file must not keep chargers from connecting: set it aside, say so.
      logger.warn({ err: (error as Error).message, path: this.legacyPath }, 'ocpp state.json unreadable')
      await rename(this.legacyPath, `${this.legacyPath}.unreadable`)
      return
    }
    const stored = await this.storedNextId()
    const next = Number.isSafeInteger(state.nextTransactionId) ? state.nextTransactionId! : 1
    if (next > stored) await store.put(TXID_KEY, encode({ next }))
    let sessions = 0
    let limits = 0
    for (const session of state.sessions ?? []) {
      if (typeof session?.station !== 'string' || typeof session.transactionId !== 'string') continue
      await store.put(sessionKey(session.station, session.transactionId), encode(session))
      sessions += 1
    }
    for (const limit of state.limits ?? []) {
      if (typeof limit?.station !== 'string' || !Number.isSafeInteger(limit.evse)) continue
      await store.put(limitKey(limit.station, limit.evse), encode(limit))
      limits += 1
    }
    await rename(this.legacyPath, `${this.legacyPath}.migrated`)
    logger.info({ sessions, limits, nextTransactionId: next }, 'ocpp state.json migrated into JetStream KV')
  }

  /** Read a station's sessions and limits from the KV (it connected here). */
  async attach(station: string): Promise<void> {
    const { store } = this.components
    // One listing for both kinds of key (`session.<station>.*`, `limit.<station>.*`).
    const keys = await store.keys(`*.${keyToken(station)}.*`)
    const read = (kind: string) =>
      Promise.all(keys.filter((key) => key.startsWith(`${kind}.`)).map((key) => store.get(key)))
    const [sessions, limits] = await Promise.all([read('session'), read('limit')])
    this.detach(station)
    for (const value of sessions) {
      if (!value) continue
      const session = decode<SessionState>(value)
      this.sessions.set(memoryKey(session.station, session.transactionId), session)
    }
    for (const value of limits) {
      if (!value) continue
      const limit = decode<LimitState>(value)
      this.limits.set(memoryKey(limit.station, limit.evse), limit)
    }
  }

  /** Forget a station's cached state (it left, perhaps for another replica). */
  detach(station: string): void {
    for (const [key, session] of this.sessions) if (session.station === station) this.sessions.delete(key)
    for (const [key, limit] of this.limits) if (limit.station === station) this.limits.delete(key)
  }

  private async storedNextId(): Promise<number> {
    const value = await this.components.store.get(TXID_KEY)
    if (!value) return 1
    const next = decode<{ next?: unknown }>(value).next
    return typeof next === 'number' && Number.isSafeInteger(next) && next > 0 ? next : 1
  }

  /**
   * A new OCPP 1.6 transaction id (1.6 ids are 32-bit integers), from the counter in the KV.
   * Serialised here; two replicas allocating at the same instant could hand out one id twice,
   * to two different stations (sessions are keyed by station and id, so they stay apart).
   */
  allocateTransactionId(): Promise<number> {
    const run = async () => {
      const id = await this.storedNextId()
      await this.components.store.put(TXID_KEY, encode({ next: id >= MAX_TRANSACTION_ID ? 1 : id + 1 }))
      return id
    }
    const result = this.allocating.then(run, run)
    this.allocating = result.catch(() => {})
    return result
  }

  session(station: string, transactionId: string): SessionState | undefined {
    return this.sessions.get(memoryKey(station, transactionId))
  }

  /** The open session on an EVSE, if any (the newest). */
  sessionOn(station: string, evse: number): SessionState | undefined {
    let found: SessionState | undefined
    for (const session of this.sessions.values()) {
      if (
        session.station === station &&
        session.evse === evse &&
        (!found || session.startedAt >= found.startedAt)
      )
        found = session
    }
    return found
  }

  /** Open sessions of the stations attached here. */
  openSessions(): number {
    return this.sessions.size
  }

  async startSession(session: SessionState): Promise<void> {
    this.sessions.set(memoryKey(session.station, session.transactionId), session)
    await this.write(() =>
      this.components.store.put(sessionKey(session.station, session.transactionId), encode(session)),
    )
  }

  /** Store a changed session (start register learnt late, latest register). */
  async updateSession(session: SessionState): Promise<void> {
    await this.startSession(session)
  }

  async endSession(station: string, transactionId: string): Promise<SessionState | undefined> {
    const key = memoryKey(station, transactionId)
    let session = this.sessions.get(key)
    if (!session) {
      // Not attached here (should not happen: a station is attached before its calls run).
      const value = await this.components.store.get(sessionKey(station, transactionId))
      session = value ? decode<SessionState>(value) : undefined
    }
    this.sessions.delete(key)
    await this.write(() => this.components.store.delete(sessionKey(station, transactionId)))
    return session
  }

  limitsOf(station: string): LimitState[] {
    return [...this.limits.values()].filter((limit) => limit.station === station)
  }

  async setLimit(limit: LimitState): Promise<void> {
    this.limits.set(memoryKey(limit.station, limit.evse), limit)
    await this.write(() => this.components.store.put(limitKey(limit.station, limit.evse), encode(limit)))
  }

  async dropLimit(station: string, evse: number): Promise<void> {
    this.limits.delete(memoryKey(station, evse))
    await this.write(() => this.components.store.delete(limitKey(station, evse)))
  }

  /**
   * A write, awaited by its caller. Writes of one station are ordered by its caller (a
   * station's calls are handled one at a time), so no queue is needed here.
   */
  private write(work: () => Promise<void>): Promise<void> {
    const result = work()
    const tracked = result.catch(() => {})
    this.writing.add(tracked)
    void tracked.then(() => this.writing.delete(tracked))
    return result
  }

  async flush(): Promise<void> {
    await Promise.all([...this.writing])
  }
}

/** A store in memory, for harnesses without a data plane (the compliance suite). */
export function createMemoryStateStore(): StateStore {
  const entries = new Map<string, Uint8Array>()
  const matches = (key: string, filter: string): boolean => {
    const keyTokens = key.split('.')
    const filterTokens = filter.split('.')
    for (let i = 0; i < filterTokens.length; i++) {
      const token = filterTokens[i]
      if (token === '>') return keyTokens.length > i
      if (keyTokens[i] === undefined || (token !== '*' && token !== keyTokens[i])) return false
    }
    return keyTokens.length === filterTokens.length
  }
  return {
    get: async (key) => entries.get(key),
    put: async (key, value) => {
      entries.set(key, value)
    },
    delete: async (key) => {
      entries.delete(key)
    },
    keys: async (filter) => [...entries.keys()].filter((key) => matches(key, filter ?? '>')),
  }
}
