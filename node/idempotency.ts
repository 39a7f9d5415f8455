/**
 * `Idempotency-Key` on POST /v1/telemetry (after draft-ietf-httpapi-idempotency-key-header): a
 * request repeated with the same key and body within IDEMPOTENCY_WINDOW_MS stores nothing twice
 * and gets the answer of the first attempt that completed.
 *
 * Two mechanisms, one per way a repeat can happen:
 * - after a complete attempt, its answer is kept in KV `oe-idempotency` (entries expire after the
 *   window) and a repeat is answered from there without publishing anything;
 * - after an attempt that failed part-way (NATS went away mid-request), the repeat publishes the
 *   records again, each with `Nats-Msg-Id` derived from the key and its index in the body, so
 *   JetStream drops the ones it already stored (within the stream's duplicate window).
 *
 * Keys are scoped by the token that sent them, so clients cannot see or spoil each other's.
 */
import { createHash, randomUUID } from 'node:crypto'
import type { JetStreamClient } from '@nats-io/jetstream'
import { type KV, Kvm } from '@nats-io/kv'

export const IDEMPOTENCY_BUCKET = 'oe-idempotency'
export const IDEMPOTENCY_WINDOW_MS = 10 * 60 * 1000
/** How long a started attempt holds its key before a repeat may take it over (a crashed node). */
export const IDEMPOTENCY_LEASE_MS = 30_000
/** An Idempotency-Key: 1 to 255 visible ASCII characters. */
export const IDEMPOTENCY_KEY_PATTERN = /^[\x21-\x7e]{1,255}$/

interface Entry {
  state: 'started' | 'done'
  /** SHA-256 of the content type and body: the same key with another body is refused. */
  fingerprint: string
  leaseUntil?: number
  /** The process that started the attempt. */
  owner?: string
  answer?: unknown
}

/** What a request with a key may do. */
export type IdempotencyClaim =
  | { kind: 'replay'; answer: unknown }
  | { kind: 'in-progress' }
  | { kind: 'other-body' }
  | {
      kind: 'proceed'
      /** `Nats-Msg-Id` of the record at `index` of the body. */
      messageId: (index: number) => string
      /** Keep the answer for repeats (best effort: a repeat without it is deduplicated anyway). */
      complete: (answer: unknown) => Promise<void>
      /** The attempt failed: let a repeat start again at once. */
      abandon: () => Promise<void>
    }

const sha256 = (...parts: (string | Uint8Array)[]): string => {
  const hash = createHash('sha256')
  for (const part of parts) hash.update(part).update('\n')
  return hash.digest('hex')
}

export class IdempotencyStore {
  private bucket: Promise<KV> | undefined
  /** This process, as the owner of the attempts it starts. */
  private readonly owner = randomUUID()
  /** Keys of the attempts running in this process now. */
  private readonly active = new Set<string>()

  constructor(
    private readonly jetstream: () => JetStreamClient,
    /** Copies of the bucket (the node's JetStream replicas). */
    private readonly replicas: () => number = () => 1,
  ) {}

  private kv(): Promise<KV> {
    this.bucket ??= new Kvm(this.jetstream())
      .create(IDEMPOTENCY_BUCKET, { history: 1, ttl: IDEMPOTENCY_WINDOW_MS, replicas: this.replicas() })
      .catch((error: unknown) => {
        this.bucket = undefined
        throw error
      })
    return this.bucket
  }

  /**
   * Claim `key` for a request of `scope` (who sent it) with this body. Throws what NATS throws
   * when the bucket cannot be reached.
   */
  async claim(
    scope: string,
    key: string,
    type: string,
    body: Uint8Array,
    now = Date.now(),
    attempt = 0,
  ): Promise<IdempotencyClaim> {
    const kv = await this.kv()
    const id = sha256(scope, key)
    const fingerprint = sha256(type, body)
    const started = (): Uint8Array =>
      new TextEncoder().encode(
        JSON.stringify({
          state: 'started',
          fingerprint,
          leaseUntil: now + IDEMPOTENCY_LEASE_MS,
          owner: this.owner,
        } satisfies Entry),
      )
    let revision: number
    try {
      revision = await kv.create(id, started())
    } catch (error) {
      // Taken: by a finished attempt, one under way, or one that died holding it.
      const entry = await kv.get(id)
      if (entry?.operation !== 'PUT') {
        // Deleted in between (an attempt abandoned it): try again, a few times at most.
        if (attempt >= 3) throw error
        return this.claim(scope, key, type, body, now, attempt + 1)
      }
      const held = entry.json<Entry>()
      if (held.fingerprint !== fingerprint) return { kind: 'other-body' }
      if (held.state === 'done') return { kind: 'replay', answer: held.answer }
      // An attempt of this process that has ended (its abandon could not reach NATS) holds no lease.
      const ours = held.owner === this.owner && !this.active.has(id)
      if ((held.leaseUntil ?? 0) > now && !ours) return { kind: 'in-progress' }
      try {
        revision = await kv.update(id, started(), entry.revision)
      } catch {
        return { kind: 'in-progress' }
      }
    }
    if (this.active.has(id)) return { kind: 'in-progress' }
    this.active.add(id)
    const prefix = `oe-idem-${id.slice(0, 32)}`
    return {
      kind: 'proceed',
      messageId: (index) => `${prefix}-${index}`,
      complete: async (answer) => {
        this.active.delete(id)
        const done: Entry = { state: 'done', fingerprint, answer }
        await kv.update(id, new TextEncoder().encode(JSON.stringify(done)), revision)
      },
      abandon: async () => {
        this.active.delete(id)
        await kv.delete(id, { previousSeq: revision })
      },
    }
  }
}
