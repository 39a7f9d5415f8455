/**
 * Durable federation state in JetStream KV, so it survives restarts of the node and of NATS and
 * can be shared by replicas: the peer directory (`oe-peers`), agreements (`oe-agreements`) and
 * the outbox of agreement messages not yet acknowledged by their peer (`oe-fed-outbox`).
 */
import type { JetStreamClient } from '@nats-io/jetstream'
import { type KV, Kvm, KvWatchInclude } from '@nats-io/kv'
import { encodeCbor } from '../data-plane/index.ts'
import type { AgreementDocument, Role, Termination } from './agreement.ts'
import { decodeFederationCbor } from './canonical-cbor.ts'
import type { AgreementMessage } from './messages.ts'
import type { KeySuccession } from './succession.ts'

export const PEERS_BUCKET = 'oe-peers'
export const AGREEMENTS_BUCKET = 'oe-agreements'
export const OUTBOX_BUCKET = 'oe-fed-outbox'
/** Per agreement, what the consumer holds (high-water marks); see transfer.ts. */
export const TRANSFER_BUCKET = 'oe-transfer'
/** This node's own key successions (key `successions`), shared by its replicas. */
export const IDENTITY_BUCKET = 'oe-identity'
export const SUCCESSIONS_KEY = 'successions'

/** A key a peer replaced (key rotation): accepted until `until`, refused from then on. */
export interface RetiredPeerKey {
  peerId: string
  /** Raw ed25519 public key, base64url. */
  publicKey: string
  /** The verified statement that replaced it. */
  succession: KeySuccession
  /** Epoch ms: connections and messages from this key are refused from then on. */
  until: number
  /** Set once the grace ended and the key's connections were closed (audited). */
  closedAt?: number
}

export interface PeerRecord {
  alias: string
  org: string
  peerId: string
  /** Raw ed25519 public key, base64url. */
  publicKey: string
  addrs: string[]
  added: number
  /** Keys the peer used before, newest last (see `succession.ts`). */
  retired?: RetiredPeerKey[]
}

export interface AgreementRecord {
  id: string
  doc: AgreementDocument
  /** Our role in it. */
  role: Role
  /** Alias of the other party. */
  peer: string
  proposedBy: Role
  rejection?: Termination
  revocation?: Termination
  /** When this node first stored it. */
  stored: number
  updated: number
  /** Set once the expiry has been recorded (audited). */
  expiredAt?: number
}

export interface OutboxEntry {
  key: string
  peer: string
  message: AgreementMessage
  created: number
  attempts: number
  lastError?: string
}

async function openBucket(js: JetStreamClient, name: string, replicas: number): Promise<KV> {
  return new Kvm(js).create(name, { history: 1, replicas })
}

async function readAll<T>(kv: KV): Promise<[string, T, number][]> {
  const keys: string[] = []
  for await (const key of await kv.keys()) keys.push(key)
  const values: [string, T, number][] = []
  for (const key of keys.sort()) {
    const entry = await kv.get(key)
    if (entry?.operation === 'PUT') values.push([key, decodeFederationCbor(entry.value) as T, entry.revision])
  }
  return values
}

/** A change another replica (or this one) made to a bucket. */
export type BucketChange<T> = { key: string; value: T } | { key: string; value: undefined }

/**
 * A KV bucket of CBOR records by key. Replicas of one node share it: `watch` tells each of the
 * others' changes (and echoes of its own, which carry nothing new and are skipped).
 */
export class RecordBucket<T> {
  /** Per key, the newest revision this replica wrote or was told of. */
  private readonly revisions = new Map<string, number>()
  private watcher: { stop(): void } | undefined

  private constructor(private readonly kv: KV) {}

  static async open<T>(
    js: JetStreamClient,
    name: string,
    options: { replicas?: number } = {},
  ): Promise<RecordBucket<T>> {
    return new RecordBucket<T>(await openBucket(js, name, options.replicas ?? 1))
  }

  async get(key: string): Promise<T | undefined> {
    const entry = await this.kv.get(key)
    return entry?.operation === 'PUT' ? (decodeFederationCbor(entry.value) as T) : undefined
  }

  async put(key: string, value: T): Promise<void> {
    const revision = await this.kv.put(key, encodeCbor(value))
    this.noteRevision(key, revision)
  }

  async delete(key: string): Promise<void> {
    await this.kv.delete(key)
  }

  async list(): Promise<T[]> {
    const entries = await readAll<T>(this.kv)
    for (const [key, , revision] of entries) this.noteRevision(key, revision)
    return entries.map(([, value]) => value)
  }

  /**
   * Call `onChange` for each change made after this call, by any replica, that this replica has
   * not made itself or seen already. Start it before `list()` so nothing falls in between.
   */
  async watch(onChange: (change: BucketChange<T>) => void): Promise<void> {
    const watcher = await this.kv.watch({ include: KvWatchInclude.UpdatesOnly })
    this.watcher = watcher
    void (async () => {
      for await (const entry of watcher) {
        if ((this.revisions.get(entry.key) ?? 0) >= entry.revision) continue
        this.revisions.set(entry.key, entry.revision)
        if (entry.operation === 'PUT') {
          let value: T
          try {
            value = decodeFederationCbor(entry.value) as T
          } catch {
            continue
          }
          onChange({ key: entry.key, value })
        } else onChange({ key: entry.key, value: undefined })
      }
    })().catch(() => {})
  }

  stopWatching(): void {
    this.watcher?.stop()
    this.watcher = undefined
  }

  private noteRevision(key: string, revision: number): void {
    if ((this.revisions.get(key) ?? 0) < revision) this.revisions.set(key, revision)
  }
}

/** This node's own key successions, oldest first (what `Federation.announceSuccession` keeps). */
export async function readOwnSuccessions(
  js: JetStreamClient,
  options: { replicas?: number } = {},
): Promise<KeySuccession[]> {
  const bucket = await RecordBucket.open<KeySuccession[]>(js, IDENTITY_BUCKET, options)
  return (await bucket.get(SUCCESSIONS_KEY)) ?? []
}
