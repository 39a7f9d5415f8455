/**
 * Length-prefixed frames on libp2p streams: an unsigned varint length, then one canonical CBOR
 * item. Frames are bounded; a longer, truncated or undecodable frame is a FrameError and the
 * caller resets the stream.
 */
import type { Stream } from '@libp2p/interface'
import { decodeFederationCbor, encodeCanonical } from './canonical-cbor.ts'
import { FrameError } from './errors.ts'

export const MAX_FRAME_BYTES = 64 * 1024

export function encodeVarint(value: number): Uint8Array {
  const bytes: number[] = []
  let rest = value
  while (rest >= 0x80) {
    bytes.push((rest & 0x7f) | 0x80)
    rest = Math.floor(rest / 128)
  }
  bytes.push(rest)
  return new Uint8Array(bytes)
}

export function encodeFrame(message: unknown, maxBytes = MAX_FRAME_BYTES): Uint8Array {
  const payload = encodeCanonical(message)
  if (payload.length > maxBytes) {
    throw new FrameError(`a frame of ${payload.length} bytes is over the limit of ${maxBytes}`)
  }
  const prefix = encodeVarint(payload.length)
  const frame = new Uint8Array(prefix.length + payload.length)
  frame.set(prefix)
  frame.set(payload, prefix.length)
  return frame
}

/**
 * Split bytes into frames. Push chunks in; `take()` returns each complete frame's payload.
 * Throws FrameError as soon as a declared length is over the limit, before buffering it.
 */
/** Received pieces under this size are joined as they come (see `push`). */
const SMALL_CHUNK = 16 * 1024

export class FrameDecoder {
  /** Bytes received and not yet taken, in the pieces they came in (copied once, into a frame). */
  private chunks: Uint8Array[] = []
  private length = 0

  constructor(private readonly maxBytes = MAX_FRAME_BYTES) {}

  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return
    const chunks = this.chunks
    chunks.push(chunk)
    this.length += chunk.length
    // A peer may send a byte at a time. Small pieces are joined like a binary counter (a piece
    // no smaller than the one before it merges with it), so there are never more than a few
    // dozen pieces per frame and each byte is copied O(log n) times.
    for (let n = chunks.length; n >= 2; n = chunks.length) {
      const last = chunks[n - 1]!
      const previous = chunks[n - 2]!
      if (last.length >= SMALL_CHUNK || last.length < previous.length) break
      const joined = new Uint8Array(previous.length + last.length)
      joined.set(previous)
      joined.set(last, previous.length)
      chunks.splice(n - 2, 2, joined)
    }
  }

  /** The next complete payload, or undefined when more bytes are needed. */
  take(): Uint8Array | undefined {
    let length = 0
    let shift = 1
    let index = 0
    for (; ; index++) {
      if (index >= this.length) return undefined
      if (index >= 4) throw new FrameError('the frame length prefix is malformed')
      const byte = this.byteAt(index)
      length += (byte & 0x7f) * shift
      shift *= 128
      if ((byte & 0x80) === 0) break
    }
    if (length > this.maxBytes)
      throw new FrameError(`a frame of ${length} bytes is over the limit of ${this.maxBytes}`)
    const start = index + 1
    if (this.length < start + length) return undefined
    this.read(start)
    return this.read(length)
  }

  get pending(): number {
    return this.length
  }

  /** How many pieces the pending bytes are held in. */
  get pieces(): number {
    return this.chunks.length
  }

  private byteAt(index: number): number {
    for (const chunk of this.chunks) {
      if (index < chunk.length) return chunk[index]!
      index -= chunk.length
    }
    throw new RangeError('past the buffered bytes')
  }

  /** The next `count` buffered bytes as a copy of their own (callers may keep them). */
  private read(count: number): Uint8Array {
    const out = new Uint8Array(count)
    let filled = 0
    let used = 0
    while (filled < count) {
      const chunk = this.chunks[used]!
      const part = Math.min(chunk.length, count - filled)
      out.set(part === chunk.length ? chunk : chunk.subarray(0, part), filled)
      filled += part
      if (part === chunk.length) used += 1
      else this.chunks[used] = chunk.subarray(part)
    }
    this.chunks.splice(0, used)
    this.length -= count
    return out
  }
}

/** Decode one frame payload into a plain value. */
export function decodeFramePayload(payload: Uint8Array): unknown {
  try {
    return decodeFederationCbor(payload)
  } catch (error) {
    throw new FrameError(`the frame is not valid CBOR: ${(error as Error).message}`)
  }
}

/**
 * Read the one frame a peer sends before closing its side of the stream (one message per
 * stream). A frame over the limit, bytes after the frame, or an end inside it is a FrameError.
 */
export async function readFrame(
  stream: Stream,
  options: { signal?: AbortSignal; maxBytes?: number } = {},
): Promise<unknown> {
  const decoder = new FrameDecoder(options.maxBytes)
  let payload: Uint8Array | undefined
  const onAbort = (): void => stream.abort(new FrameError('timed out waiting for a frame'))
  options.signal?.addEventListener('abort', onAbort, { once: true })
  try {
    for await (const chunk of stream) {
      decoder.push(chunk instanceof Uint8Array ? chunk : chunk.subarray())
      payload ??= decoder.take()
      if (payload !== undefined && decoder.pending > 0)
        throw new FrameError('unexpected bytes after the frame')
    }
  } finally {
    options.signal?.removeEventListener('abort', onAbort)
  }
  options.signal?.throwIfAborted()
  if (payload === undefined) {
    throw new FrameError(
      decoder.pending > 0 ? 'the stream ended inside a frame (truncated)' : 'the stream ended before a frame',
    )
  }
  return decodeFramePayload(payload)
}

/** Write one frame, honouring back-pressure. */
export async function writeFrame(
  stream: Stream,
  message: unknown,
  options: { signal?: AbortSignal } = {},
): Promise<void> {
  if (!stream.send(encodeFrame(message))) await stream.onDrain(options)
}
