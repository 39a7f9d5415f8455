/**
 * CBOR codecs for data-plane payloads (cbor-x). Maps decode to plain objects; records are not
 * shared between messages (`useRecords: false`) so every payload stands on its own.
 */
// Side effect first: keep cbor-x off its native extractor (see cbor-setup.ts).
import './cbor-setup.ts'
import { Encoder, isNativeAccelerationEnabled } from 'cbor-x'
import { DecodeError } from './errors.ts'
import type { TelemetryPayload, TelemetryRecord } from './model.ts'

if (isNativeAccelerationEnabled) {
  throw new Error(
    'cbor-x loaded its native extractor, which crashes Bun: import data-plane/codec.ts before cbor-x',
  )
}

const cbor = new Encoder({ useRecords: false, mapsAsObjects: true, tagUint8Array: false })

export function encodeCbor(value: unknown): Uint8Array {
  return cbor.encode(value)
}

/** Decode one CBOR item; throws DecodeError with the reason on malformed input. */
export function decodeCbor(bytes: Uint8Array): unknown {
  try {
    return cbor.decode(bytes)
  } catch (error) {
    throw new DecodeError(`malformed CBOR: ${(error as Error).message}`, { cause: error })
  }
}

/** The payload of `oe.tel.…` for one record: what the subject does not already carry. */
export function encodeTelemetryPayload(record: TelemetryRecord): Uint8Array {
  const payload: TelemetryPayload = { v: record.v, t: record.t }
  if (record.u !== undefined) payload.u = record.u
  if (record.ql !== undefined) payload.ql = record.ql
  return cbor.encode(payload)
}

/**
 * Decode a message payload for display: CBOR where it is CBOR, else UTF-8 text, else base64.
 * Used by `tail`, which may be pointed at any subject.
 */
export function decodeForDisplay(bytes: Uint8Array): unknown {
  if (bytes.length === 0) return null
  try {
    return toJsonSafe(cbor.decode(bytes))
  } catch {
    const text = new TextDecoder('utf-8', { fatal: false }).decode(bytes)
    return text.includes('\uFFFD') ? { base64: Buffer.from(bytes).toString('base64') } : text
  }
}

function toJsonSafe(value: unknown): unknown {
  if (value instanceof Uint8Array) return { base64: Buffer.from(value).toString('base64') }
  if (typeof value === 'bigint') return value.toString()
  if (value instanceof Map) return Object.fromEntries([...value].map(([k, v]) => [String(k), toJsonSafe(v)]))
  if (Array.isArray(value)) return value.map(toJsonSafe)
  if (typeof value === 'object' && value !== null) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toJsonSafe(v)]))
  }
  return value
}
