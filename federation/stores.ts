/**
 * Durable federation state in JetStream KV, so it survives restarts of the node and of NATS and
 * can be shared by replicas: the peer directory (`oe-peers`), agreements (`oe-agreements`) and
 * the outbox of agreement messages not yet acknowledged by their peer (`oe-fed-outbox`).
 */
import type { JetStreamClient } from '@nats-io/jetstream'
import { type KV, Kvm } from '@nats-io/kv'
import { encodeCbor } from '../data-plane/index.ts'
import type { AgreementDocument, Role, Termination } from './agreement.ts'
import { decodeFederationCbor } from './canonical-cbor.ts'
import type { AgreementMessage } from './messages.ts'

export const PEERS_BUCKET = 'oe-peers'
export const AGREEMENTS_BUCKET = 'oe-agreements'
export const OUTBOX_BUCKET = 'oe-fed-outbox'
/** Per agreement, what the consumer holds (high-water marks); see transfer.ts. */
export const TRANSFER_BUCKET = 'oe-transfer'

export interface PeerRecord {
  alias: string
  org: string
  peerId: string
  /** Raw ed25519 public key, base64url. */
  publicKey: string
  addrs: string[]
  added: number
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

async function openBucket(js: JetStreamClient, name: string): Promise<KV> {
  return new Kvm(js).create(name, { history: 1 })
}

async function readAll<T>(kv: KV): Promise<T[]> {
  const keys: string[] = []
  for await (const key of await kv.keys()) keys.push(key)
  const values: T[] = []
  for (const key of keys.sort()) {
    const entry = await kv.get(key)
    if (entry?.operation === 'PUT') values.push(decodeFederationCbor(entry.value) as T)
  }
  return values
}

/** A KV bucket of CBOR records by key. */
export class RecordBucket<T> {
  private constructor(private readonly kv: KV) {}

  static async open<T>(js: JetStreamClient, name: string): Promise<RecordBucket<T>> {
    return new RecordBucket<T>(await openBucket(js, name))
  }

  async get(key: string): Promise<T | undefined> {
    const entry = await this.kv.get(key)
    return entry?.operation === 'PUT' ? (decodeFederationCbor(entry.value) as T) : undefined
  }

  async put(key: string, value: T): Promise<void> {
    await this.kv.put(key, encodeCbor(value))
  }

  async delete(key: string): Promise<void> {
    await this.kv.delete(key)
  }

  async list(): Promise<T[]> {
    return readAll<T>(this.kv)
  }
}
