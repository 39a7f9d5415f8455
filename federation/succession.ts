/**
 * Key succession (key rotation): a node that replaces its key signs, with the old key and with
 * the new one (proving it holds both), the statement "org X's key `from` → `to` from `at`; the
 * old key is accepted until `graceUntil`". Partners that know the old key verify it and move the
 * peer to the new key under the same alias; agreements signed by the old key stay valid because
 * whoever checks a party follows this chain to the party's current key.
 *
 * The signed bytes are the canonical CBOR of the statement (without its signatures) under the
 * tag `type: 'oe-key-succession'`, which no agreement id (32 bytes), batch hash (32 bytes) or
 * audit checkpoint (64 hex characters) can be mistaken for.
 *
 * @example
 * const statement = signSuccession({ org: 'Gridco', from: oldIdentity, to: newIdentity, graceMs: 86_400_000 })
 * parseSuccession(decoded) // shape and both signatures, or a named error
 */
import { createHash } from 'node:crypto'
import { publicKeyFromRaw } from '@libp2p/crypto/keys'
import { peerIdFromPublicKey } from '@libp2p/peer-id'
import * as ed from '@noble/ed25519'
import { base64url, keyBytes, type Signer } from './agreement.ts'
import { encodeCanonical } from './canonical-cbor.ts'
import { AgreementFormatError, SuccessionSignatureError } from './errors.ts'

// @noble/ed25519 needs a synchronous SHA-512; the runtime's is exact and fast.
ed.hashes.sha512 = (message: Uint8Array) => new Uint8Array(createHash('sha512').update(message).digest())

export const SUCCESSION_VERSION = 1
/** The grace `oe-node key rotate` gives the old key unless told otherwise. */
export const DEFAULT_GRACE_MS = 24 * 3_600_000
/** The longest grace a statement may ask for (a partner refuses longer ones). */
export const MAX_GRACE_MS = 30 * 24 * 3_600_000

/** "Org `org`'s key `from` is succeeded by `to` from `at`; `from` is accepted until `graceUntil`." */
export interface KeySuccession {
  v: number
  org: string
  /** The old key, raw ed25519, base64url. */
  from: string
  /** The new key, raw ed25519, base64url. */
  to: string
  /** Epoch ms: the new key is in force from then on. */
  at: number
  /** Epoch ms: the old key is refused from then on (equal to `at`: at once). */
  graceUntil: number
  /** base64url ed25519 signatures over `successionBytes`, by the old key and by the new one. */
  sigs: { from: string; to: string }
}

/** The bytes both signatures cover. */
export function successionBytes(statement: Omit<KeySuccession, 'sigs'>): Uint8Array {
  return encodeCanonical({
    type: 'oe-key-succession',
    v: statement.v,
    org: statement.org,
    from: statement.from,
    to: statement.to,
    at: statement.at,
    graceUntil: statement.graceUntil,
  })
}

export interface SignSuccessionInput {
  org: string
  from: Signer
  to: Signer
  /** Default now. */
  at?: number
  /** How long the old key stays accepted after `at` (0: not at all). */
  graceMs: number
}

export function signSuccession(input: SignSuccessionInput): KeySuccession {
  if (!Number.isSafeInteger(input.graceMs) || input.graceMs < 0 || input.graceMs > MAX_GRACE_MS)
    throw new AgreementFormatError('grace', `must be from 0 to ${MAX_GRACE_MS / 86_400_000} days`)
  const at = input.at ?? Date.now()
  const unsigned = {
    v: SUCCESSION_VERSION,
    org: input.org,
    from: base64url(input.from.publicKey),
    to: base64url(input.to.publicKey),
    at,
    graceUntil: at + input.graceMs,
  }
  const bytes = successionBytes(unsigned)
  return {
    ...unsigned,
    sigs: { from: base64url(input.from.sign(bytes)), to: base64url(input.to.sign(bytes)) },
  }
}

/** Signature bytes from base64url, only in its one canonical spelling. */
function signatureBytes(signature: unknown): Uint8Array | undefined {
  if (typeof signature !== 'string' || !/^[A-Za-z0-9_-]{86}$/.test(signature)) return undefined
  const bytes = new Uint8Array(Buffer.from(signature, 'base64url'))
  return bytes.length === 64 && base64url(bytes) === signature ? bytes : undefined
}

function verifies(signature: string, message: Uint8Array, key: string): boolean {
  try {
    const sig = signatureBytes(signature)
    return sig !== undefined && ed.verify(sig, message, keyBytes(key), { zip215: false })
  } catch {
    return false
  }
}

/** Which of a statement's two signatures fails, or undefined when both verify. */
export function successionSignatureProblem(statement: KeySuccession): string | undefined {
  const bytes = successionBytes(statement)
  if (!verifies(statement.sigs.from, bytes, statement.from))
    return 'the succession statement is not signed by the old key it names'
  if (!verifies(statement.sigs.to, bytes, statement.to))
    return 'the succession statement is not signed by the new key it names (no proof the successor holds it)'
  return undefined
}

function integer(value: unknown, path: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0)
    throw new AgreementFormatError(path, 'must be a whole number of milliseconds since the epoch')
  return value
}

/**
 * Check a statement from outside: its shape, then both signatures. Throws AgreementFormatError
 * (with the field's path) or SuccessionSignatureError.
 */
export function parseSuccession(value: unknown, path = 'succession'): KeySuccession {
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    throw new AgreementFormatError(path, 'must be a map')
  const raw = value as Record<string, unknown>
  for (const key of Object.keys(raw)) {
    if (!['v', 'org', 'from', 'to', 'at', 'graceUntil', 'sigs'].includes(key))
      throw new AgreementFormatError(`${path}.${key}`, 'is not a field of a succession statement')
  }
  if (raw.v !== SUCCESSION_VERSION)
    throw new AgreementFormatError(`${path}.v`, `must be ${SUCCESSION_VERSION}`)
  if (typeof raw.org !== 'string' || raw.org.length === 0 || raw.org.length > 128)
    throw new AgreementFormatError(`${path}.org`, 'must be text of 1 to 128 characters')
  keyBytes(raw.from as string, `${path}.from`)
  keyBytes(raw.to as string, `${path}.to`)
  if (raw.from === raw.to) throw new AgreementFormatError(`${path}.to`, 'is the same key as from')
  const at = integer(raw.at, `${path}.at`)
  const graceUntil = integer(raw.graceUntil, `${path}.graceUntil`)
  if (graceUntil < at) throw new AgreementFormatError(`${path}.graceUntil`, 'is before at')
  if (graceUntil - at > MAX_GRACE_MS)
    throw new AgreementFormatError(
      `${path}.graceUntil`,
      `the grace may last ${MAX_GRACE_MS / 86_400_000} days at most`,
    )
  const sigs = raw.sigs as Record<string, unknown> | undefined
  if (
    typeof sigs !== 'object' ||
    sigs === null ||
    typeof sigs.from !== 'string' ||
    typeof sigs.to !== 'string'
  )
    throw new AgreementFormatError(`${path}.sigs`, 'must be {from, to}, two signatures')
  const statement: KeySuccession = {
    v: SUCCESSION_VERSION,
    org: raw.org,
    from: raw.from as string,
    to: raw.to as string,
    at,
    graceUntil,
    sigs: { from: sigs.from, to: sigs.to },
  }
  const problem = successionSignatureProblem(statement)
  if (problem) throw new SuccessionSignatureError(problem)
  return statement
}

/** The libp2p PeerId (`12D3KooW…`) of a raw ed25519 key in base64url. */
export function peerIdOfKey(key: string): string {
  return peerIdFromPublicKey(publicKeyFromRaw(keyBytes(key))).toString()
}
