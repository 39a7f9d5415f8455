/**
 * Sharing agreements (ARCHITECTURE §6): the body both organisations sign, its grants, its
 * canonical encoding and id, signatures, the lifecycle state, and the text form that travels
 * by mail. Everything that arrives from outside goes through `parseAgreementDocument`, which
 * checks shape, id and signatures; nothing else is trusted.
 */
import { createHash, randomBytes } from 'node:crypto'
import * as ed from '@noble/ed25519'
import { isQuantity, isResourceId, RESOURCE_KINDS, type ResourceKind } from '../data-plane/index.ts'
import { decodeFederationCbor, encodeCanonical } from './canonical-cbor.ts'
import { AgreementFormatError, BadSignatureError, FederationError } from './errors.ts'

// @noble/ed25519 needs a synchronous SHA-512; the runtime's is exact and fast.
ed.hashes.sha512 = (message: Uint8Array) => new Uint8Array(createHash('sha512').update(message).digest())

export const AGREEMENT_VERSION = 1

export interface Party {
  org: string
  /** Raw ed25519 public key, base64url. */
  key: string
}

interface Scope {
  kinds: ResourceKind[]
  rids?: string[]
  sites?: string[]
}

export type Grant =
  | (Scope & { data: 'telemetry'; quantities: string[]; minIntervalMs?: number })
  | (Scope & { data: 'standing'; attrs: string[] })
  | (Scope & { data: 'events'; types: string[] })
  | (Scope & { data: 'control'; commands: string[]; bounds?: Record<string, { min?: number; max?: number }> })

export type GrantData = Grant['data']

export interface AgreementBody {
  v: number
  provider: Party
  consumer: Party
  purpose: string
  /** Epoch milliseconds. */
  created: number
  validFrom: number
  validUntil: number
  nonce: string
  grants: Grant[]
  limits?: { maxRecordsPerSec?: number }
  onwardSharing: false
}

export type Role = 'provider' | 'consumer'

export interface Signatures {
  provider?: string
  consumer?: string
}

/** A body with the signatures made so far; what is exchanged and stored. */
export interface AgreementDocument {
  body: AgreementBody
  signatures: Signatures
}

/** A signed statement ending an agreement: a rejection of a proposal or a revocation. */
export interface Termination {
  id: string
  /** base64url key of the party that ended it. */
  by: string
  at: number
  reason: string
  sig: string
}

export type AgreementState = 'proposed' | 'accepted' | 'active' | 'rejected' | 'expired' | 'revoked'

export interface Signer {
  publicKey: Uint8Array
  sign(message: Uint8Array): Uint8Array
}

const TOKEN = /^[a-z][a-z0-9_]{0,63}$/
const ATTR = /^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$/
const NONCE = /^[0-9a-f]{32}$/
const MAX_LIST = 256
const MAX_GRANTS = 64
const SCOPE_KEYS = ['data', 'kinds', 'rids', 'sites']
const GRANT_KEYS: Record<GrantData, string[]> = {
  telemetry: [...SCOPE_KEYS, 'quantities', 'minIntervalMs'],
  standing: [...SCOPE_KEYS, 'attrs'],
  events: [...SCOPE_KEYS, 'types'],
  control: [...SCOPE_KEYS, 'commands', 'bounds'],
}
const BODY_KEYS = [
  'v',
  'provider',
  'consumer',
  'purpose',
  'created',
  'validFrom',
  'validUntil',
  'nonce',
  'grants',
  'limits',
  'onwardSharing',
]

export const base64url = (bytes: Uint8Array): string => Buffer.from(bytes).toString('base64url')

export function keyBytes(key: string, path = 'key'): Uint8Array {
  if (typeof key !== 'string' || !/^[A-Za-z0-9_-]{43}$/.test(key)) {
    throw new AgreementFormatError(path, 'must be a base64url ed25519 public key (43 characters)')
  }
  const bytes = new Uint8Array(Buffer.from(key, 'base64url'))
  // One spelling per key: the last character has spare bits, so compare texts only if canonical.
  if (base64url(bytes) !== key) throw new AgreementFormatError(path, 'is not in canonical base64url')
  return bytes
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return (
    typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Uint8Array)
  )
}

function object(value: unknown, path: string, allowed: readonly string[]): Record<string, unknown> {
  if (!isPlainObject(value)) throw new AgreementFormatError(path, 'must be an object')
  for (const key of Object.keys(value)) {
    if (!allowed.includes(key))
      throw new AgreementFormatError(path ? `${path}.${key}` : key, 'is not a known field')
  }
  return value
}

function integer(value: unknown, path: string, min = 0): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) {
    throw new AgreementFormatError(path, `must be a whole number of at least ${min}`)
  }
  return value
}

function text(value: unknown, path: string, max: number): string {
  if (typeof value !== 'string' || value.length === 0 || value.length > max) {
    throw new AgreementFormatError(path, `must be text of 1 to ${max} characters`)
  }
  return value
}

function list<T extends string>(
  value: unknown,
  path: string,
  check: (item: string) => boolean,
  what: string,
): T[] {
  if (!Array.isArray(value) || value.length === 0 || value.length > MAX_LIST) {
    throw new AgreementFormatError(path, `must be a list of 1 to ${MAX_LIST} ${what}`)
  }
  const seen = new Set<string>()
  value.forEach((item, index) => {
    if (typeof item !== 'string' || !check(item)) {
      throw new AgreementFormatError(
        `${path}[${index}]`,
        `'${String(item).slice(0, 64)}' is not a valid ${what.replace(/s$/, '')}`,
      )
    }
    if (seen.has(item)) throw new AgreementFormatError(`${path}[${index}]`, `'${item}' is listed twice`)
    seen.add(item)
  })
  return value as T[]
}

const kindSet: ReadonlySet<string> = new Set(RESOURCE_KINDS)

export function parseGrant(value: unknown, path: string): Grant {
  if (!isPlainObject(value)) throw new AgreementFormatError(path, 'must be an object')
  const data = value.data
  if (typeof data !== 'string' || !Object.hasOwn(GRANT_KEYS, data)) {
    throw new AgreementFormatError(`${path}.data`, 'must be one of telemetry, standing, events, control')
  }
  const raw = object(value, path, GRANT_KEYS[data as GrantData])
  const scope: Scope = {
    kinds: list<ResourceKind>(raw.kinds, `${path}.kinds`, (k) => kindSet.has(k), 'resource kinds'),
  }
  if (raw.rids !== undefined) scope.rids = list(raw.rids, `${path}.rids`, isResourceId, 'resource ids')
  if (raw.sites !== undefined) scope.sites = list(raw.sites, `${path}.sites`, isResourceId, 'site ids')
  switch (data as GrantData) {
    case 'telemetry': {
      const grant: Grant = {
        data: 'telemetry',
        ...scope,
        quantities: list(raw.quantities, `${path}.quantities`, isQuantity, 'quantities'),
      }
      if (raw.minIntervalMs !== undefined)
        grant.minIntervalMs = integer(raw.minIntervalMs, `${path}.minIntervalMs`)
      return grant
    }
    case 'standing':
      return {
        data: 'standing',
        ...scope,
        attrs: list(raw.attrs, `${path}.attrs`, (a) => ATTR.test(a), 'attribute names'),
      }
    case 'events':
      return {
        data: 'events',
        ...scope,
        types: list(raw.types, `${path}.types`, (t) => TOKEN.test(t), 'event types'),
      }
    case 'control': {
      const grant: Grant = {
        data: 'control',
        ...scope,
        commands: list(raw.commands, `${path}.commands`, (c) => TOKEN.test(c), 'commands'),
      }
      if (raw.bounds !== undefined) {
        const bounds = object(raw.bounds, `${path}.bounds`, grant.commands)
        grant.bounds = {}
        for (const [command, bound] of Object.entries(bounds)) {
          const b = object(bound, `${path}.bounds.${command}`, ['min', 'max'])
          const entry: { min?: number; max?: number } = {}
          for (const edge of ['min', 'max'] as const) {
            if (b[edge] === undefined) continue
            if (typeof b[edge] !== 'number' || !Number.isFinite(b[edge])) {
              throw new AgreementFormatError(`${path}.bounds.${command}.${edge}`, 'must be a finite number')
            }
            entry[edge] = b[edge] as number
          }
          if (entry.min !== undefined && entry.max !== undefined && entry.min > entry.max) {
            throw new AgreementFormatError(`${path}.bounds.${command}`, 'min is above max')
          }
          grant.bounds[command] = entry
        }
      }
      return grant
    }
  }
}

function parseParty(value: unknown, path: string): Party {
  const raw = object(value, path, ['org', 'key'])
  const party = { org: text(raw.org, `${path}.org`, 128), key: raw.key as string }
  keyBytes(party.key, `${path}.key`)
  return party
}

/** Check an agreement body field by field; the first problem is thrown with its path. */
export function parseAgreementBody(value: unknown): AgreementBody {
  const raw = object(value, 'body', BODY_KEYS)
  if (raw.v !== AGREEMENT_VERSION) throw new AgreementFormatError('body.v', `must be ${AGREEMENT_VERSION}`)
  const body: AgreementBody = {
    v: AGREEMENT_VERSION,
    provider: parseParty(raw.provider, 'body.provider'),
    consumer: parseParty(raw.consumer, 'body.consumer'),
    purpose: text(raw.purpose, 'body.purpose', 1000),
    created: integer(raw.created, 'body.created'),
    validFrom: integer(raw.validFrom, 'body.validFrom'),
    validUntil: integer(raw.validUntil, 'body.validUntil'),
    nonce: raw.nonce as string,
    grants: [],
    onwardSharing: false,
  }
  if (body.provider.key === body.consumer.key)
    throw new AgreementFormatError('body.consumer.key', 'provider and consumer are the same key')
  if (typeof body.nonce !== 'string' || !NONCE.test(body.nonce))
    throw new AgreementFormatError('body.nonce', 'must be 32 hex characters')
  if (body.validUntil <= body.validFrom)
    throw new AgreementFormatError('body.validUntil', 'must be after validFrom')
  if (!Array.isArray(raw.grants) || raw.grants.length === 0 || raw.grants.length > MAX_GRANTS) {
    throw new AgreementFormatError('body.grants', `must be a list of 1 to ${MAX_GRANTS} grants`)
  }
  body.grants = raw.grants.map((grant, index) => parseGrant(grant, `body.grants[${index}]`))
  if (raw.limits !== undefined) {
    const limits = object(raw.limits, 'body.limits', ['maxRecordsPerSec'])
    body.limits = {}
    if (limits.maxRecordsPerSec !== undefined)
      body.limits.maxRecordsPerSec = integer(limits.maxRecordsPerSec, 'body.limits.maxRecordsPerSec', 1)
  }
  if (raw.onwardSharing !== false)
    throw new AgreementFormatError('body.onwardSharing', 'must be false (the only value in version 1)')
  return body
}

export interface NewAgreementInput {
  provider: Party
  consumer: Party
  purpose: string
  validFrom: number
  validUntil: number
  grants: Grant[]
  limits?: { maxRecordsPerSec?: number }
  now?: number
}

/** A new, validated body with a fresh nonce. */
export function newAgreementBody(input: NewAgreementInput): AgreementBody {
  const body: Record<string, unknown> = {
    v: AGREEMENT_VERSION,
    provider: input.provider,
    consumer: input.consumer,
    purpose: input.purpose,
    created: input.now ?? Date.now(),
    validFrom: input.validFrom,
    validUntil: input.validUntil,
    nonce: randomBytes(16).toString('hex'),
    grants: input.grants,
    onwardSharing: false,
  }
  if (input.limits) body.limits = input.limits
  return parseAgreementBody(body)
}

/** The canonical bytes of a body. */
export function encodeBody(body: AgreementBody): Uint8Array {
  return encodeCanonical(body)
}

/** The agreement id: hex SHA-256 of the canonical body. */
export function agreementId(body: AgreementBody): string {
  return createHash('sha256').update(encodeBody(body)).digest('hex')
}

export function signId(id: string, signer: Signer): string {
  return base64url(signer.sign(Buffer.from(id, 'hex')))
}

/** Signature bytes from base64url, only in its one canonical spelling (so texts compare). */
function signatureBytes(signature: unknown): Uint8Array | undefined {
  if (typeof signature !== 'string' || !/^[A-Za-z0-9_-]{86}$/.test(signature)) return undefined
  const bytes = new Uint8Array(Buffer.from(signature, 'base64url'))
  return bytes.length === 64 && base64url(bytes) === signature ? bytes : undefined
}

export function verifyIdSignature(id: string, signature: string, key: string): boolean {
  try {
    const sig = signatureBytes(signature)
    if (!sig) return false
    return ed.verify(sig, Buffer.from(id, 'hex'), keyBytes(key))
  } catch {
    return false
  }
}

export function roleOf(body: AgreementBody, key: string): Role | undefined {
  if (body.provider.key === key) return 'provider'
  if (body.consumer.key === key) return 'consumer'
  return undefined
}

export const otherRole = (role: Role): Role => (role === 'provider' ? 'consumer' : 'provider')

/**
 * Check a document from outside: shape, and every signature present against the party it
 * names. Returns the typed document and its id (recomputed; any id sent along is not trusted).
 */
export function parseAgreementDocument(value: unknown): { id: string; doc: AgreementDocument } {
  const raw = object(value, '', ['body', 'signatures'])
  const body = parseAgreementBody(raw.body)
  const id = agreementId(body)
  const sigs = object(raw.signatures ?? {}, 'signatures', ['provider', 'consumer'])
  const signatures: Signatures = {}
  for (const role of ['provider', 'consumer'] as const) {
    const signature = sigs[role]
    if (signature === undefined) continue
    if (typeof signature !== 'string' || !verifyIdSignature(id, signature, body[role].key)) {
      throw new BadSignatureError(
        `the ${role} signature does not verify against the ${role} key for this body`,
      )
    }
    signatures[role] = signature
  }
  if (!signatures.provider && !signatures.consumer)
    throw new BadSignatureError('the agreement carries no signature')
  return { id, doc: { body, signatures } }
}

/** The bytes a termination's signature covers. */
function terminationBytes(kind: 'reject' | 'revoke', t: Omit<Termination, 'sig'>): Uint8Array {
  return encodeCanonical({ type: kind, id: t.id, by: t.by, at: t.at, reason: t.reason })
}

export function signTermination(
  kind: 'reject' | 'revoke',
  id: string,
  reason: string,
  signer: Signer,
  at = Date.now(),
): Termination {
  const t = { id, by: base64url(signer.publicKey), at, reason }
  return { ...t, sig: base64url(signer.sign(terminationBytes(kind, t))) }
}

export function parseTermination(kind: 'reject' | 'revoke', value: unknown): Termination {
  const raw = object(value, kind, ['id', 'by', 'at', 'reason', 'sig'])
  if (typeof raw.id !== 'string' || !/^[0-9a-f]{64}$/.test(raw.id))
    throw new AgreementFormatError(`${kind}.id`, 'must be an agreement id')
  keyBytes(raw.by as string, `${kind}.by`)
  const termination: Termination = {
    id: raw.id,
    by: raw.by as string,
    at: integer(raw.at, `${kind}.at`),
    reason: typeof raw.reason === 'string' && raw.reason.length <= 1000 ? raw.reason : '',
    sig: typeof raw.sig === 'string' ? raw.sig : '',
  }
  if (typeof raw.reason !== 'string' || raw.reason.length > 1000)
    throw new AgreementFormatError(`${kind}.reason`, 'must be text of at most 1000 characters')
  let valid = false
  try {
    const sig = signatureBytes(termination.sig)
    valid = sig !== undefined && ed.verify(sig, terminationBytes(kind, termination), keyBytes(termination.by))
  } catch {
    valid = false
  }
  if (!valid)
    throw new BadSignatureError(
      `the ${kind === 'reject' ? 'rejection' : 'revocation'} signature does not verify`,
    )
  return termination
}

/** State from signatures, terminations and the clock: both parties compute the same. */
export function agreementState(
  doc: AgreementDocument,
  terminations: { rejection?: Termination; revocation?: Termination },
  now = Date.now(),
): AgreementState {
  if (terminations.revocation) return 'revoked'
  if (terminations.rejection) return 'rejected'
  if (now >= doc.body.validUntil) return 'expired'
  if (!doc.signatures.provider || !doc.signatures.consumer) return 'proposed'
  return now < doc.body.validFrom ? 'accepted' : 'active'
}

const ARMOR_BEGIN = '-----BEGIN OE AGREEMENT-----'
const ARMOR_END = '-----END OE AGREEMENT-----'

/** The text form that survives copy, paste and mail: armored, wrapped base64 of the CBOR document. */
export function exportAgreement(id: string, doc: AgreementDocument, state: AgreementState): string {
  const encoded = Buffer.from(encodeCanonical(doc)).toString('base64')
  const lines = encoded.match(/.{1,64}/g) ?? []
  const signedBy = (['provider', 'consumer'] as const).filter((role) => doc.signatures[role]).join(' and ')
  return [
    ARMOR_BEGIN,
    `Id: ${id}`,
    `State: ${state} (signed by ${signedBy})`,
    `Provider: ${doc.body.provider.org}`,
    `Consumer: ${doc.body.consumer.org}`,
    '',
    ...lines,
    ARMOR_END,
    '',
  ].join('\n')
}

const MAX_ARMORED = 256 * 1024

/** Read the text form (quoting, CRLF and indentation from mail are tolerated) and check it fully. */
export function importAgreement(textForm: string): { id: string; doc: AgreementDocument } {
  if (textForm.length > MAX_ARMORED)
    throw new AgreementFormatError('', 'the text is too large to be an agreement')
  const lines = textForm.split(/\r?\n/).map((line) => line.replace(/^[\s>]*/, '').trimEnd())
  const begin = lines.indexOf(ARMOR_BEGIN)
  const end = lines.indexOf(ARMOR_END, begin + 1)
  if (begin < 0 || end < 0)
    throw new AgreementFormatError('', `no '${ARMOR_BEGIN}' … '${ARMOR_END}' block found`)
  const inner = lines.slice(begin + 1, end)
  const claimedId = inner
    .find((line) => line.startsWith('Id:'))
    ?.slice(3)
    .trim()
  const payload = inner.filter((line) => line !== '' && !/^[A-Za-z-]+:\s/.test(line)).join('')
  if (!/^[A-Za-z0-9+/=]+$/.test(payload))
    throw new AgreementFormatError('', 'the agreement block is not base64')
  let decoded: unknown
  try {
    decoded = decodeFederationCbor(Buffer.from(payload, 'base64'))
  } catch {
    throw new AgreementFormatError('', 'the agreement block is damaged (it may have been cut when copied)')
  }
  const parsed = parseAgreementDocument(decoded)
  if (claimedId && claimedId !== parsed.id) {
    throw new FederationError(
      `the Id line says ${claimedId} but the content hashes to ${parsed.id}: the text was altered`,
    )
  }
  return parsed
}
