/**
 * The transfer hot path's codecs. Every function here has a general twin elsewhere and gives the
 * same answer, only faster on the inputs the hot path sees; on anything else it defers to the
 * twin, so unusual input is judged exactly as before. The fuzz tests hold each pair together.
 *
 * - `encodeBatchBody`: `encodeCanonical` of a batch body, the same bytes, in one pass.
 * - `decodeBatchBody`: `decodeFederationCbor` of a batch body in the shape the provider writes
 *   (ASCII text, definite lengths, the keys in canonical order); anything else comes back
 *   undefined and the caller decodes it the general way.
 * - `telemetryTime`: `decodeCbor(payload).t` without building the object, and with non-maps
 *   answered as "no time" rather than a TypeError.
 * - `streamSequence`: `JsMsg.seq` without parsing the rest of the delivery info.
 */
import type { JsMsg } from '@nats-io/jetstream'
import { decodeCbor } from '../data-plane/index.ts'
import { putHead } from './canonical-cbor.ts'
import { FrameError } from './errors.ts'
import { encodeVarint } from './frames.ts'

/** A transfer batch body (see transfer.ts): records are [subject after `oe.`, payload, source seq]. */
export interface BatchBody {
  id: string
  n: number
  a: string
  upTo: number
  r: [string, Uint8Array, number][]
}

// ── encoding ────────────────────────────────────────────────────────────────────────────────────

const textEncoder = new TextEncoder()
/** Most bytes a CBOR head takes. */
const HEAD_MAX = 9

class Out {
  length = 0
  readonly view: DataView
  constructor(readonly buffer: Uint8Array) {
    this.view = new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength)
  }

  head(major: number, value: number): void {
    this.length = putHead(this.buffer, this.view, this.length, major, value)
  }

  text(value: string): void {
    const length = value.length
    let ascii = true
    for (let i = 0; i < length; i++) {
      if (value.charCodeAt(i) > 0x7f) {
        ascii = false
        break
      }
    }
    if (!ascii) {
      const bytes = textEncoder.encode(value)
      this.head(3, bytes.length)
      this.bytes(bytes)
      return
    }
    this.head(3, length)
    const buffer = this.buffer
    let at = this.length
    for (let i = 0; i < length; i++) buffer[at++] = value.charCodeAt(i)
    this.length = at
  }

  bytes(value: Uint8Array): void {
    this.buffer.set(value, this.length)
    this.length += value.length
  }
}

function uint(value: number, what: string): number {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`${what} must be a whole number ≥ 0`)
  return value
}

/**
 * `encodeCanonical(body)`, byte for byte: a map whose keys sort as `a`, `n`, `r`, `id`, `upTo`
 * (shorter encodings first), records as 3-arrays, integers in their shortest form.
 */
export function encodeBatchBody(body: BatchBody): Uint8Array {
  const out = new Out(new Uint8Array(bodyCapacity(body)))
  writeBody(out, body)
  return out.buffer.slice(0, out.length)
}

/** A bound on the encoded size, not the size: a UTF-16 code unit never takes over 3 UTF-8 bytes. */
function bodyCapacity(body: BatchBody): number {
  let capacity = 64 + HEAD_MAX * 4 + 3 * (body.id.length + body.a.length)
  for (const record of body.r) capacity += recordCapacity(record)
  return capacity
}

/** The most bytes one record takes in a batch body (a UTF-16 code unit at 3 UTF-8 bytes at most). */
export const recordCapacity = ([subject, payload]: [string, Uint8Array, number]): number =>
  1 + 3 * HEAD_MAX + 3 * subject.length + payload.length

/** Room for a batch frame's length prefix and `{t:'batch', sig:<64 bytes>, body:<head>}` before the body. */
const FRAME_HEAD_ROOM = 5 + 1 + 6 + 4 + 2 + 64 + 5 + HEAD_MAX

/**
 * A whole transfer batch frame: `encodeFrame({ t: 'batch', body, sig })` where body is
 * `encodeCanonical(batch)` and sig is `sign(body)`, written with the body in place (no copies).
 * Throws FrameError, as encodeFrame does, when the frame's payload would be over `maxBytes`.
 */
export function encodeBatchFrame(
  batch: BatchBody,
  sign: (body: Uint8Array) => Uint8Array,
  maxBytes: number,
): { frame: Uint8Array; bodyBytes: number } {
  const buffer = new Uint8Array(FRAME_HEAD_ROOM + bodyCapacity(batch))
  const out = new Out(buffer)
  out.length = FRAME_HEAD_ROOM
  writeBody(out, batch)
  const body = buffer.subarray(FRAME_HEAD_ROOM, out.length)
  const sig = sign(body)
  if (sig.length !== 64) throw new RangeError('a batch signature is 64 bytes')
  // The map head and the two small keys, then the body's byte-string head, in front of the body.
  const head = new Out(new Uint8Array(FRAME_HEAD_ROOM))
  head.head(5, 3)
  head.text('t')
  head.text('batch')
  head.text('sig')
  head.head(2, 64)
  head.bytes(sig)
  head.text('body')
  head.head(2, body.length)
  const payloadLength = head.length + body.length
  if (payloadLength > maxBytes) {
    throw new FrameError(`a frame of ${payloadLength} bytes is over the limit of ${maxBytes}`)
  }
  const prefix = encodeVarint(payloadLength)
  const start = FRAME_HEAD_ROOM - head.length - prefix.length
  buffer.set(prefix, start)
  buffer.set(head.buffer.subarray(0, head.length), start + prefix.length)
  return { frame: buffer.subarray(start, out.length), bodyBytes: body.length }
}

function writeBody(out: Out, body: BatchBody): void {
  out.head(5, 5)
  out.text('a')
  out.text(body.a)
  out.text('n')
  out.head(0, uint(body.n, 'n'))
  out.text('r')
  out.head(4, body.r.length)
  for (const [subject, payload, seq] of body.r) {
    out.head(4, 3)
    out.text(subject)
    out.head(2, payload.length)
    out.bytes(payload)
    out.head(0, uint(seq, 'a record sequence'))
  }
  out.text('id')
  out.text(body.id)
  out.text('upTo')
  out.head(0, uint(body.upTo, 'upTo'))
}

// ── decoding ────────────────────────────────────────────────────────────────────────────────────

/** Thrown inside the fast readers when the input leaves the fast path; never escapes them. */
const OFF_PATH = Symbol('off the fast path')
const latin1 = new TextDecoder('latin1')

class In {
  at = 0
  constructor(readonly bytes: Uint8Array) {}

  /** The major type of the head `head()` read last. */
  major = 0

  /**
   * The head of the next item: its argument, with its major type in `major` (no pair is built:
   * this runs for every key and value); indefinite lengths and bad sizes leave.
   */
  head(): number {
    const bytes = this.bytes
    if (this.at >= bytes.length) throw OFF_PATH
    const initial = bytes[this.at++]!
    this.major = initial >> 5
    const info = initial & 0x1f
    if (info < 24) return info
    let size: number
    if (info === 24) size = 1
    else if (info === 25) size = 2
    else if (info === 26) size = 4
    else if (info === 27) size = 8
    else throw OFF_PATH
    if (this.at + size > bytes.length) throw OFF_PATH
    let value = 0
    for (let i = 0; i < size; i++) value = value * 256 + bytes[this.at++]!
    if (!Number.isSafeInteger(value)) throw OFF_PATH
    return value
  }

  uint(): number {
    const value = this.head()
    const major = this.major
    if (major !== 0) throw OFF_PATH
    return value
  }

  /** An ASCII text string (anything else leaves the fast path). */
  text(): string {
    const length = this.head()
    const major = this.major
    if (major !== 3 || this.at + length > this.bytes.length) throw OFF_PATH
    const bytes = this.bytes
    const end = this.at + length
    for (let i = this.at; i < end; i++) if (bytes[i]! > 0x7f) throw OFF_PATH
    const part = bytes.subarray(this.at, end)
    this.at = end
    return length <= 1024 ? String.fromCharCode.apply(null, part as unknown as number[]) : latin1.decode(part)
  }

  /** A byte string: a view into the input, not a copy (the batch body is the reader's own). */
  byteString(): Uint8Array {
    const length = this.head()
    const major = this.major
    if (major !== 2 || this.at + length > this.bytes.length) throw OFF_PATH
    const value = this.bytes.subarray(this.at, this.at + length)
    this.at += length
    return value
  }

  key(expected: string): void {
    if (this.text() !== expected) throw OFF_PATH
  }

  /**
   * A map key, not built into a string: 1 for `t`, 2 for `__proto__` (cbor-x treats it apart),
   * 0 for any other ASCII key; anything else leaves the fast path as `text()` would.
   */
  keyKind(): number {
    const length = this.head()
    const major = this.major
    if (major !== 3 || this.at + length > this.bytes.length) throw OFF_PATH
    const bytes = this.bytes
    const start = this.at
    const end = start + length
    for (let i = start; i < end; i++) if (bytes[i]! > 0x7f) throw OFF_PATH
    this.at = end
    if (length === 1) return bytes[start] === 0x74 ? 1 : 0
    if (length === 9 && bytes[start] === 0x5f && bytes[start + 1] === 0x5f) {
      for (let i = 0; i < 9; i++) if (bytes[start + i] !== PROTO_KEY[i]) return 0
      return 2
    }
    return 0
  }

  /**
   * An ASCII text string as `text()` reads it, the same string handed back for the same bytes:
   * the subjects of a batch repeat, and building each afresh is most of what reading one costs.
   */
  internedText(cache: TextCache): string {
    const length = this.head()
    const major = this.major
    if (major !== 3 || this.at + length > this.bytes.length) throw OFF_PATH
    const value = this.asciiInterned(length, cache)
    if (value === undefined) throw OFF_PATH
    return value
  }

  /** The next `length` bytes as an interned string, if they are ASCII (else undefined, not read). */
  asciiInterned(length: number, cache: TextCache): string | undefined {
    const value = internAscii(this.bytes, this.at, length, cache)
    if (value !== undefined) this.at += length
    return value
  }
}

/**
 * `bytes[start, start + length)` as a string when they are ASCII (else undefined), the same string
 * as last time when the same bytes come again and their slot in `cache` still holds them.
 */
function internAscii(bytes: Uint8Array, start: number, length: number, cache: TextCache): string | undefined {
  const end = start + length
  if (end > bytes.length) return undefined
  let hash = length
  for (let i = start; i < end; i++) {
    const byte = bytes[i]!
    if (byte > 0x7f) return undefined
    hash = (Math.imul(hash, 31) + byte) | 0
  }
  const slot = (hash >>> 0) % TEXT_CACHE_SLOTS
  const cached = cache[slot]
  if (cached !== undefined && cached.length === length) {
    let same = true
    for (let i = 0; i < length; i++) {
      if (cached.charCodeAt(i) !== bytes[start + i]) {
        same = false
        break
      }
    }
    if (same) return cached
  }
  const part = bytes.subarray(start, end)
  const value =
    length <= 1024 ? String.fromCharCode.apply(null, part as unknown as number[]) : latin1.decode(part)
  cache[slot] = value
  return value
}

/** `__proto__` in ASCII. */
const PROTO_KEY = [0x5f, 0x5f, 0x70, 0x72, 0x6f, 0x74, 0x6f, 0x5f, 0x5f]

/** Slots of a batch decoder's subject cache (one string each, the last seen for its hash). */
const TEXT_CACHE_SLOTS = 4_096
type TextCache = (string | undefined)[]
/** Shared by every decodeBatchBody call: the subjects of one provider repeat from batch to batch. */
const subjectCache: TextCache = new Array(TEXT_CACHE_SLOTS)

/**
 * A batch body as `decodeFederationCbor` would return it, when it has the shape the provider
 * writes; undefined when it has not (decode it the general way then: it may still be a batch,
 * with records to drop one by one, or not CBOR at all).
 */
export function decodeBatchBody(bytes: Uint8Array): BatchBody | undefined {
  const input = new In(bytes)
  try {
    const entries = input.head()
    const major = input.major
    if (major !== 5 || entries !== 5) return undefined
    input.key('a')
    const a = input.text()
    input.key('n')
    const n = input.uint()
    input.key('r')
    const count = input.head()
    const arrayMajor = input.major
    // Each record takes at least 4 bytes: no count the body cannot hold is believed.
    if (arrayMajor !== 4 || count * 4 > bytes.length) return undefined
    const r: [string, Uint8Array, number][] = new Array(count)
    for (let i = 0; i < count; i++) {
      const fields = input.head()
      const recordMajor = input.major
      if (recordMajor !== 4 || fields !== 3) return undefined
      r[i] = [input.internedText(subjectCache), input.byteString(), input.uint()]
    }
    input.key('id')
    const id = input.text()
    input.key('upTo')
    const upTo = input.uint()
    if (input.at !== bytes.length) return undefined
    return { id, n, a, upTo, r }
  } catch (error) {
    if (error === OFF_PATH) return undefined
    throw error
  }
}

/** The record's time from a telemetry payload `{v,t,…}`: `t` when it is a number, else undefined. */
export function telemetryTime(payload: Uint8Array): number | undefined {
  const fast = fastTelemetryTime(payload)
  if (fast !== OFF_PATH) return fast
  let decoded: unknown
  try {
    decoded = decodeCbor(payload)
  } catch {
    return undefined
  }
  if (typeof decoded !== 'object' || decoded === null || decoded instanceof Uint8Array) return undefined
  const t = (decoded as { t?: unknown }).t
  return typeof t === 'number' ? t : undefined
}

/** The fast half of `telemetryTime`: the time, undefined (no t), or OFF_PATH (ask cbor-x). Exported for tests. */
export function fastTelemetryTime(payload: Uint8Array): number | undefined | typeof OFF_PATH {
  const input = new In(payload)
  try {
    const entries = input.head()
    const major = input.major
    if (major !== 5) return OFF_PATH
    let t: number | undefined
    let seen = false
    for (let i = 0; i < entries; i++) {
      const key = input.keyKind()
      if (key === 1) {
        if (seen) return OFF_PATH
        seen = true
        const at = input.at
        const initial = payload[at]
        if (initial === 0xfb) {
          // A float64, as cbor-x writes epoch milliseconds (over 2^32) and fractions.
          if (at + 9 > payload.length) return OFF_PATH
          t = new DataView(payload.buffer, payload.byteOffset + at + 1, 8).getFloat64(0)
          input.at = at + 9
          continue
        }
        // cbor-x reads 8-byte integers as bigint (no number t then) and rounds float32 and
        // float16 its own way: the general path judges those, and anything else.
        if (initial === undefined || (initial & 0x1f) === 27 || initial >> 5 > 1) return OFF_PATH
        const value = input.head()
        const valueMajor = input.major
        t = valueMajor === 0 ? value : -1 - value
      } else if (key === 2) {
        return OFF_PATH
      } else skipValue(input)
    }
    if (input.at !== payload.length) return OFF_PATH
    return t
  } catch (error) {
    if (error === OFF_PATH) return OFF_PATH
    throw error
  }
}

/** Skip one value: integers, ASCII text, byte strings, floats, false/true/null; else leave. */
function skipValue(input: In, depth = 0): void {
  if (depth > 8) throw OFF_PATH
  const bytes = input.bytes
  if (input.at >= bytes.length) throw OFF_PATH
  const initial = bytes[input.at]!
  const major = initial >> 5
  if (major === 7) {
    input.at += 1
    const info = initial & 0x1f
    if (info >= 20 && info <= 22) return
    const size = info === 25 ? 2 : info === 26 ? 4 : info === 27 ? 8 : 0
    if (size === 0 || input.at + size > bytes.length) throw OFF_PATH
    input.at += size
    return
  }
  if (major === 6) throw OFF_PATH
  const value = input.head()
  if (major === 2) {
    if (input.at + value > bytes.length) throw OFF_PATH
    input.at += value
  } else if (major === 3) {
    if (input.at + value > bytes.length) throw OFF_PATH
    for (let i = input.at; i < input.at + value; i++) if (bytes[i]! > 0x7f) throw OFF_PATH
    input.at += value
  } else if (major === 4) {
    for (let i = 0; i < value; i++) skipValue(input, depth + 1)
  } else if (major === 5) {
    for (let i = 0; i < value; i++) {
      input.text()
      skipValue(input, depth + 1)
    }
  }
}

// ── JetStream ───────────────────────────────────────────────────────────────────────────────────

/**
 * `msg.seq` (the stream sequence) read straight from the delivery subject: the 6th token of
 * `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>`, or the 8th of the form
 * with domain and account hash. Anything else asks nats.js.
 */
export function streamSequence(msg: JsMsg): number {
  // JsMsgImpl keeps the core message as `msg`, and nats.js's MsgImpl the reply's bytes in
  // `_msg.reply`: read there, the sequence costs no string at all. Should either change, the
  // reply string answers, and failing that nats.js.
  const core = (msg as unknown as { msg?: { reply?: unknown; _msg?: { reply?: unknown } } }).msg
  const bytes = core?._msg?.reply
  if (bytes instanceof Uint8Array) {
    const value = sequenceFromReply(bytes)
    if (value > 0) return value
  }
  const reply = core?.reply
  if (typeof reply === 'string' && reply.startsWith('$JS.ACK.')) {
    const tokens = reply.split('.')
    const token = tokens.length === 9 ? tokens[5] : tokens.length >= 11 ? tokens[7] : undefined
    const value = token === undefined ? Number.NaN : Number(token)
    if (Number.isSafeInteger(value) && value > 0) return value
  }
  return msg.seq
}

/** Shared by every messageSubject call: a provider's subjects repeat from message to message. */
const messageSubjectCache: TextCache = new Array(TEXT_CACHE_SLOTS)

/**
 * `msg.subject`, read from the subject's bytes nats.js keeps (`_msg.subject`) and handed back as
 * the same string each time the same subject comes (so the scope's remembered decisions find it
 * at once). Anything unexpected asks nats.js.
 */
export function messageSubject(msg: JsMsg): string {
  const bytes = (msg as unknown as { msg?: { _msg?: { subject?: unknown } } }).msg?._msg?.subject
  if (bytes instanceof Uint8Array) {
    const value = internAscii(bytes, 0, bytes.length, messageSubjectCache)
    if (value !== undefined) return value
  }
  return msg.subject
}

/** `$JS.ACK.` in ASCII. */
const ACK_PREFIX = [0x24, 0x4a, 0x53, 0x2e, 0x41, 0x43, 0x4b, 0x2e]

/**
 * The stream sequence in a delivery subject's bytes, by the same rule as the string path of
 * `streamSequence` (token 6 of 9, token 8 of 11 or more); 0 when it does not apply.
 */
function sequenceFromReply(bytes: Uint8Array): number {
  const length = bytes.length
  if (length < ACK_PREFIX.length) return 0
  for (let i = 0; i < ACK_PREFIX.length; i++) if (bytes[i] !== ACK_PREFIX[i]) return 0
  // Where tokens 5 and 7 (0-based) start and end; tokens are counted by their dots.
  let dots = 0
  let start5 = -1
  let end5 = -1
  let start7 = -1
  let end7 = -1
  for (let i = 0; i < length; i++) {
    if (bytes[i] !== 0x2e) continue
    dots += 1
    if (dots === 5) start5 = i + 1
    else if (dots === 6) end5 = i
    else if (dots === 7) start7 = i + 1
    else if (dots === 8) end7 = i
  }
  const tokens = dots + 1
  let start: number
  let end: number
  if (tokens === 9) {
    start = start5
    end = end5
  } else if (tokens >= 11) {
    start = start7
    end = end7
  } else return 0
  if (start < 0 || end <= start || end - start > 15) return 0
  let value = 0
  for (let i = start; i < end; i++) {
    const digit = bytes[i]! - 0x30
    if (digit < 0 || digit > 9) return 0
    value = value * 10 + digit
  }
  return Number.isSafeInteger(value) ? value : 0
}
