/**
 * What the CSMS must remember across restarts, in `<data-dir>/plugins/ocpp/state.json`: open
 * charging sessions (a station may report the end of a session the node saw start before a
 * restart), the next OCPP 1.6 transaction id, and the latest power limit per EVSE/station (sent
 * again when the station reconnects). Writes are atomic (temp file + rename) and serialised.
 */
import { readFile, rename, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from '../../data-plane/index.ts'

export interface SessionState {
  station: string
  /** EVSE number (1.6 connector id). */
  evse: number
  transactionId: string
  startedAt: number
  meterStartWh?: number
  /** Latest energy register seen during the session (kept in memory between writes). */
  lastEnergyWh?: number
}

export interface LimitState {
  station: string
  /** 0 for the station itself. */
  evse: number
  watts: number
  until?: number
  source?: string
}

interface StateFile {
  v: 1
  nextTransactionId: number
  sessions: SessionState[]
  limits: LimitState[]
}

export interface OcppStateInit {
  dir: string
}

export interface OcppStateComponents {
  logger: Logger
}

const sessionKey = (station: string, transactionId: string) => `${station}\u0000${transactionId}`
const limitKey = (station: string, evse: number) => `${station}\u0000${evse}`

export class OcppState {
  private readonly path: string
  private nextTransactionId = 1
  private readonly sessions = new Map<string, SessionState>()
  private readonly limits = new Map<string, LimitState>()
  private writing: Promise<void> = Promise.resolve()

  constructor(
    init: OcppStateInit,
    private readonly components: OcppStateComponents,
  ) {
    this.path = join(init.dir, 'state.json')
  }

  async load(): Promise<void> {
    let text: string
    try {
      text = await readFile(this.path, 'utf8')
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return
      throw error
    }
    try {
      const state = JSON.parse(text) as StateFile
      this.nextTransactionId = Number.isSafeInteger(state.nextTransactionId) ? state.nextTransactionId : 1
      for (const session of state.sessions ?? [])
        this.sessions.set(sessionKey(session.station, session.transactionId), session)
      for (const limit of state.limits ?? []) this.limits.set(limitKey(limit.station, limit.evse), limit)
    } catch (error) {
      // A damaged file must not keep chargers from connecting: start afresh, say so.
      this.components.logger.warn({ err: (error as Error).message, path: this.path }, 'ocpp state unreadable')
    }
  }

  /** A new OCPP 1.6 transaction id (1.6 ids are 32-bit integers). */
  allocateTransactionId(): number {
    const id = this.nextTransactionId
    this.nextTransactionId = id >= 2_147_483_647 ? 1 : id + 1
    return id
  }

  session(station: string, transactionId: string): SessionState | undefined {
    return this.sessions.get(sessionKey(station, transactionId))
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

  openSessions(): number {
    return this.sessions.size
  }

  async startSession(session: SessionState): Promise<void> {
    this.sessions.set(sessionKey(session.station, session.transactionId), session)
    await this.save()
  }

  async endSession(station: string, transactionId: string): Promise<SessionState | undefined> {
    const key = sessionKey(station, transactionId)
    const session = this.sessions.get(key)
    this.sessions.delete(key)
    await this.save()
    return session
  }

  limitsOf(station: string): LimitState[] {
    return [...this.limits.values()].filter((limit) => limit.station === station)
  }

  async setLimit(limit: LimitState): Promise<void> {
    this.limits.set(limitKey(limit.station, limit.evse), limit)
    await this.save()
  }

  async dropLimit(station: string, evse: number): Promise<void> {
    if (this.limits.delete(limitKey(station, evse))) await this.save()
  }

  /** Persist (serialised; the last call's content wins). Transaction ids are saved too. */
  save(): Promise<void> {
    const run = async (): Promise<void> => {
      const state: StateFile = {
        v: 1,
        nextTransactionId: this.nextTransactionId,
        sessions: [...this.sessions.values()],
        limits: [...this.limits.values()],
      }
      const temp = `${this.path}.tmp`
      await writeFile(temp, JSON.stringify(state), { mode: 0o600 })
      await rename(temp, this.path)
    }
    this.writing = this.writing.then(run, run)
    return this.writing
  }

  async flush(): Promise<void> {
    await this.writing.catch(() => {})
  }
}
