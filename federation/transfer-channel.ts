import type { Stream } from '@libp2p/interface'
import type { JsMsg } from '@nats-io/jetstream'
import { FrameError } from './errors.ts'
import { decodeFramePayload, FrameDecoder, writeFrame } from './frames.ts'

/** Frames on a bidirectional stream: an async reader and a writer honouring back-pressure. */
export class Channel {
  private readonly decoder: FrameDecoder
  private readonly queue: unknown[] = []
  private waiting: ((value: unknown) => void) | undefined
  private failed: Error | undefined
  private ended = false
  /** Frames that may wait unread; more is a peer sending without credit. */
  private queueLimit = Number.POSITIVE_INFINITY

  constructor(
    readonly stream: Stream,
    maxBytes: number,
  ) {
    this.decoder = new FrameDecoder(maxBytes)
    void this.pump()
  }

  private async pump(): Promise<void> {
    try {
      for await (const chunk of this.stream) {
        this.decoder.push(chunk instanceof Uint8Array ? chunk : chunk.subarray())
        for (let payload = this.decoder.take(); payload !== undefined; payload = this.decoder.take()) {
          this.deliver(decodeFramePayload(payload))
        }
      }
      this.ended = true
    } catch (error) {
      // A broken or flooding stream: nothing queued from it is processed any more.
      this.failed = error as Error
      this.queue.length = 0
      this.abort(this.failed)
    }
    this.deliver(undefined)
  }

  /** Why the incoming side failed (bad framing, flooding), if it did. */
  get failure(): Error | undefined {
    return this.failed
  }

  /** Bound what may wait unread: with credit-based flow control no more can legitimately arrive. */
  limitQueue(frames: number): void {
    this.queueLimit = frames
  }

  private deliver(value: unknown): void {
    if (this.waiting) {
      const resolve = this.waiting
      this.waiting = undefined
      resolve(value)
    } else if (value !== undefined) {
      if (this.queue.length >= this.queueLimit) {
        throw new FrameError(
          `more than ${this.queueLimit} frames arrived unacknowledged: sent without credit (flooding)`,
        )
      }
      this.queue.push(value)
    }
  }

  /** The next frame; undefined when the stream ended. Throws FrameError on bad framing. */
  async next(): Promise<unknown> {
    if (this.queue.length > 0) return this.queue.shift()
    if (this.failed) throw this.failed
    if (this.ended) return undefined
    const value = await new Promise<unknown>((resolve) => {
      this.waiting = resolve
    })
    if (value === undefined && this.failed) throw this.failed
    return value
  }

  send(message: unknown): Promise<void> {
    return writeFrame(this.stream, message)
  }

  async sendEncoded(frame: Uint8Array): Promise<void> {
    if (!this.stream.send(frame)) await this.stream.onDrain()
  }

  abort(reason: Error): void {
    if (this.stream.status === 'open') this.stream.abort(reason)
  }
}

/** JetStream messages as nats.js delivers them, taken a batch at a time. */
export class Inbox {
  private items: JsMsg[] = []
  private waiter: (() => void) | undefined
  private wanted = 1
  ended = false

  readonly push = (msg: JsMsg): void => {
    this.items.push(msg)
    if (this.items.length >= this.wanted) this.wake()
  }

  get size(): number {
    return this.items.length
  }

  end(): void {
    this.ended = true
    this.wake()
  }

  /** Resolves once `count` messages are here, the inbox has ended, or `ms` have passed. */
  wait(count: number, ms: number): Promise<void> {
    if (this.items.length >= count || this.ended) return Promise.resolve()
    this.wanted = count
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiter = undefined
        resolve()
      }, ms)
      this.waiter = () => {
        clearTimeout(timer)
        resolve()
      }
    })
  }

  take(max: number): JsMsg[] {
    return this.items.splice(0, max)
  }

  private wake(): void {
    const waiter = this.waiter
    this.waiter = undefined
    this.wanted = 1
    waiter?.()
  }
}
