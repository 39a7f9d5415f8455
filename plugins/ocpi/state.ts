/**
 * What the OCPI plugin keeps, in its JetStream KV buckets (ARCHITECTURE §3: state lives in
 * JetStream, so a restart or another replica finds it):
 *
 * - `oe-plugin-ocpi-partners`: `partner.<id>` one record per partner (its roles, version,
 *   endpoints, the token we call it with, last contact) and `auth.<sha256>` one entry per
 *   credentials token we check (only its SHA-256: the token itself is never stored).
 * - `oe-plugin-ocpi-objects`: OCPI objects by owner and id (`loc.`, `ses.`, `cdr.`, `tar.`,
 *   `tok.` for received ones; `cses.`, `ccdr.` for the sessions and CDRs the CPO role makes),
 *   EVSE statuses (`status.`), commands in flight (`cmd.`), and pull progress (`pull.`).
 *
 * Ids from the wire are not KV-safe (any printable ASCII): key tokens are base64url of the id.
 * Writes to one key go one after another (read-modify-write of a location and its EVSEs).
 */
import { createHash, randomBytes } from 'node:crypto'
import type { PluginStore } from '../api.ts'
import type { TokenEncoding } from './client.ts'
import type { CredentialsRole, Endpoint } from './v221.ts'

/** One OCPI partner: another platform we exchange credentials with. */
export interface Partner {
  /** Local name: `[a-z0-9][a-z0-9-]*`. */
  id: string
  name: string
  /** invited: a token A exists, no registration yet; registered: tokens exchanged. */
  state: 'invited' | 'registered'
  createdAt: number
  /** Who started the credentials exchange. */
  initiator?: 'partner' | 'us'
  /** Their parties and roles (from their credentials). */
  roles: CredentialsRole[]
  versionsUrl?: string
  version?: string
  endpoints: Endpoint[]
  /** The credentials token we present to them (we must send it, so it is kept). */
  tokenToThem?: string
  encoding: TokenEncoding
  registeredAt?: number
  lastContact?: number
  lastError?: string
}

export interface AuthEntry {
  partner: string
  token: 'registration' | 'partner'
}

/** Progress of a paginated pull, kept after every page so an interrupted pull resumes. */
export interface PullProgress {
  partner: string
  module: string
  /** The page to fetch next. */
  next: string
  startedAt: number
  /** Objects stored so far in this pull. */
  received: number
  total?: number
  /** Set once the last page was stored: the next pull asks from here (`date_from`). */
  completedAt?: number
  /** When the last complete pull began (its `date_from` for the next one). */
  since?: number
}

const encoder = new TextEncoder()
const decoder = new TextDecoder()

/** A key token for any printable id (KV keys are `[-/_=.a-zA-Z0-9]`). */
export const keyToken = (id: string): string => Buffer.from(id, 'utf8').toString('base64url') || '-'
export const fromKeyToken = (token: string): string => Buffer.from(token, 'base64url').toString('utf8')

export const sha256 = (text: string): string => createHash('sha256').update(text, 'utf8').digest('hex')

/** A new credentials token: 43 characters of base64url (256 bits). */
export const newToken = (): string => randomBytes(32).toString('base64url')

/** JSON values in a plugin store, with one writer per key at a time. */
export class JsonStore {
  private readonly locks = new Map<string, Promise<unknown>>()

  constructor(readonly store: PluginStore) {}

  async get<T>(key: string): Promise<T | undefined> {
    const value = await this.store.get(key)
    return value ? (JSON.parse(decoder.decode(value)) as T) : undefined
  }

  async put(key: string, value: unknown): Promise<void> {
    await this.store.put(key, encoder.encode(JSON.stringify(value)))
  }

  delete(key: string): Promise<void> {
    return this.store.delete(key)
  }

  keys(filter: string): Promise<string[]> {
    return this.store.keys(filter)
  }

  /** Every value under a filter (e.g. `ses.>`), in key order. */
  async values<T>(filter: string): Promise<{ key: string; value: T }[]> {
    const keys = (await this.store.keys(filter)).sort()
    const out: { key: string; value: T }[] = []
    for (let i = 0; i < keys.length; i += 64) {
      const chunk = keys.slice(i, i + 64)
      const values = await Promise.all(chunk.map((key) => this.get<T>(key)))
      values.forEach((value, index) => {
        if (value !== undefined) out.push({ key: chunk[index]!, value })
      })
    }
    return out
  }

  /** Read, change and write one key, after any other change of it. */
  update<T>(
    key: string,
    change: (current: T | undefined) => T | undefined | Promise<T | undefined>,
  ): Promise<T | undefined> {
    const run = async (): Promise<T | undefined> => {
      const current = await this.get<T>(key)
      const next = await change(current)
      if (next === undefined) {
        if (current !== undefined) await this.delete(key)
      } else {
        await this.put(key, next)
      }
      return next
    }
    const previous = this.locks.get(key) ?? Promise.resolve()
    const done = previous.then(run, run)
    const settled = done.catch(() => {})
    this.locks.set(key, settled)
    void settled.then(() => {
      if (this.locks.get(key) === settled) this.locks.delete(key)
    })
    return done
  }
}

/** Partners and the hashes of the tokens they call us with. */
export class PartnerState {
  constructor(private readonly kv: JsonStore) {}

  get(id: string): Promise<Partner | undefined> {
    return this.kv.get<Partner>(`partner.${id}`)
  }

  async list(): Promise<Partner[]> {
    return (await this.kv.values<Partner>('partner.*')).map((entry) => entry.value)
  }

  put(partner: Partner): Promise<void> {
    return this.kv.put(`partner.${partner.id}`, partner)
  }

  update(
    id: string,
    change: (partner: Partner | undefined) => Partner | undefined,
  ): Promise<Partner | undefined> {
    return this.kv.update<Partner>(`partner.${id}`, change)
  }

  async remove(id: string): Promise<void> {
    await this.kv.delete(`partner.${id}`)
    await this.revokeTokens(id)
  }

  /** Accept `token` from this partner from now on (its hash is stored, never the token). */
  grantToken(partner: string, token: string, kind: AuthEntry['token']): Promise<void> {
    return this.kv.put(`auth.${sha256(token)}`, { partner, token: kind } satisfies AuthEntry)
  }

  /** Stop accepting every token of this partner (or only those of one kind, but the one hashed `except`). */
  async revokeTokens(partner: string, kind?: AuthEntry['token'], except?: string): Promise<void> {
    for (const { key, value } of await this.kv.values<AuthEntry>('auth.*')) {
      if (
        value.partner === partner &&
        (kind === undefined || value.token === kind) &&
        key !== `auth.${except}`
      )
        await this.kv.delete(key)
    }
  }

  /** Stop accepting one token, by its hash. */
  revokeHash(hash: string): Promise<void> {
    return this.kv.delete(`auth.${hash}`)
  }

  authenticate(token: string): Promise<AuthEntry | undefined> {
    return this.kv.get<AuthEntry>(`auth.${sha256(token)}`)
  }
}

/** A store in memory, for harnesses without a data plane. */
export function createMemoryStore(bucket = 'memory'): PluginStore {
  const entries = new Map<string, Uint8Array>()
  const matches = (key: string, filter: string): boolean => {
    const keyTokens = key.split('.')
    const filterTokens = filter.split('.')
    for (let i = 0; i < filterTokens.length; i++) {
      if (filterTokens[i] === '>') return keyTokens.length > i
      if (i >= keyTokens.length || (filterTokens[i] !== '*' && filterTokens[i] !== keyTokens[i])) return false
    }
    return keyTokens.length === filterTokens.length
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
