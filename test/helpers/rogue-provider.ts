/**
 * The provider side of `/oe/transfer/1.0.0`, played by a rogue peer for adversarial tests: it
 * opens the stream itself and writes whatever frames a test builds (signed with the rogue's own
 * valid key, or tampered with), and collects what the consumer answers and how the stream ends.
 */
import { createHash, sign } from 'node:crypto'
import type { Stream } from '@libp2p/interface'
import { multiaddr } from '@multiformats/multiaddr'
import { encodeCbor } from '../../data-plane/index.ts'
import { decodeFramePayload, encodeCanonical, FrameDecoder } from '../../federation/index.ts'
import type { NodeIdentity } from '../../node/index.ts'
import type { Rogue } from './rogue-peer.ts'

export const TRANSFER_PROTOCOL = '/oe/transfer/1.0.0'
const MAX_REPLY_BYTES = 1024 * 1024

/** One record as a batch carries it: subject without `oe.`, payload, source sequence. */
export type BatchRecord = [string, Uint8Array, number]

export interface BatchBody {
  id: string
  n: number
  a: string
  upTo: number
  r: BatchRecord[]
}

export interface BatchFrame {
  t: 'batch'
  body: Uint8Array
  sig: Uint8Array
}

/** A varint length and the canonical CBOR of `message`, with no size limit (tests exceed them). */
export function frameBytes(message: unknown): Uint8Array {
  const payload = encodeCanonical(message)
  const prefix: number[] = []
  let rest = payload.length
  while (rest >= 0x80) {
    prefix.push((rest & 0x7f) | 0x80)
    rest = Math.floor(rest / 128)
  }
  prefix.push(rest)
  const frame = new Uint8Array(prefix.length + payload.length)
  frame.set(prefix)
  frame.set(payload, prefix.length)
  return frame
}

/** A batch frame signed as a provider signs it: ed25519 over SHA-256 of the body bytes. */
export function signedBatch(identity: NodeIdentity, body: BatchBody): BatchFrame {
  const bytes = encodeCanonical(body)
  const sig = sign(null, createHash('sha256').update(bytes).digest(), identity.privateKeyObject)
  return { t: 'batch', body: bytes, sig: new Uint8Array(sig) }
}

/** A telemetry payload as the data plane stores it, with a `tag` so a test finds its own records. */
export function reading(tag: string, t = Date.now(), v = 1): Uint8Array {
  return encodeCbor({ v, t, tag })
}

export type Ending = { how: 'closed' } | { how: 'reset'; error: string }

export interface TransferLink {
  stream: Stream
  /** Write one frame (any size) and wait for the write buffer to drain. */
  send(message: unknown): Promise<void>
  /** Write raw bytes; gives up after `timeoutMs` if the consumer stops reading. */
  sendBytes(bytes: Uint8Array, timeoutMs?: number): Promise<void>
  /** The next frame from the consumer; undefined if the stream ended first or nothing came in time. */
  next(timeoutMs?: number): Promise<unknown>
  /** Every frame received so far. */
  readonly received: unknown[]
  /** Resolves when the consumer closes or resets the stream. */
  readonly ended: Promise<Ending>
  /** Whether the stream ended within `timeoutMs`. */
  endedWithin(timeoutMs: number): Promise<Ending | undefined>
  abort(): void
}

/** Open `/oe/transfer/1.0.0` to `target` as the provider and start reading the consumer's frames. */
export async function openTransfer(rogue: Rogue, target: string): Promise<TransferLink> {
  const stream = await rogue.node.dialProtocol(multiaddr(target), TRANSFER_PROTOCOL, {
    signal: AbortSignal.timeout(10_000),
  })
  const received: unknown[] = []
  const queue: unknown[] = []
  let waiting: (() => void) | undefined
  let finished = false
  const wake = (): void => {
    const resolve = waiting
    waiting = undefined
    resolve?.()
  }
  const ended = (async (): Promise<Ending> => {
    const decoder = new FrameDecoder(MAX_REPLY_BYTES)
    try {
      for await (const chunk of stream) {
        decoder.push(chunk instanceof Uint8Array ? chunk : chunk.subarray())
        for (let payload = decoder.take(); payload !== undefined; payload = decoder.take()) {
          const frame = decodeFramePayload(payload)
          received.push(frame)
          queue.push(frame)
          wake()
        }
      }
      return { how: 'closed' }
    } catch (error) {
      return { how: 'reset', error: (error as Error).message }
    } finally {
      finished = true
      wake()
    }
  })()

  const write = async (bytes: Uint8Array, timeoutMs: number): Promise<void> => {
    if (!stream.send(bytes)) await stream.onDrain({ signal: AbortSignal.timeout(timeoutMs) })
  }

  return {
    stream,
    received,
    ended,
    send: (message) => write(frameBytes(message), 10_000),
    sendBytes: (bytes, timeoutMs = 10_000) => write(bytes, timeoutMs),
    async next(timeoutMs = 5_000) {
      const deadline = Date.now() + timeoutMs
      while (queue.length === 0 && !finished && Date.now() < deadline) {
        await Promise.race([
          new Promise<void>((resolve) => {
            waiting = resolve
          }),
          Bun.sleep(Math.max(1, deadline - Date.now())),
        ])
      }
      return queue.shift()
    },
    async endedWithin(timeoutMs) {
      return Promise.race([ended, Bun.sleep(timeoutMs).then(() => undefined)])
    },
    abort() {
      if (stream.status === 'open') stream.abort(new Error('rogue provider done'))
    },
  }
}
