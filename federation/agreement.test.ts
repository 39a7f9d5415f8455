import { createHash, createPublicKey, generateKeyPairSync, verify } from 'node:crypto'
import * as ed from '@noble/ed25519'
import { describe, expect, it, test } from 'vitest'
import { thrown } from '../test/helpers/check.ts'
import {
  type AgreementBody,
  type AgreementDocument,
  agreementId,
  agreementState,
  base64url,
  encodeBody,
  exportAgreement,
  type Grant,
  importAgreement,
  type NewAgreementInput,
  newAgreementBody,
  parseAgreementBody,
  parseAgreementDocument,
  parseTermination,
  type Signer,
  signId,
  signTermination,
  type Termination,
} from './agreement.ts'
import { decodeFederationCbor, encodeCanonical } from './canonical-cbor.ts'

// @noble/ed25519 needs a synchronous SHA-512 (agreement.ts sets it too; tests must not rely on import order).
ed.hashes.sha512 = (message: Uint8Array) => new Uint8Array(createHash('sha512').update(message).digest())

interface TestIdentity {
  org: string
  key: string
  party: { org: string; key: string }
  signer: Signer
  /** The same key as a node:crypto KeyObject, to check signatures independently of @noble. */
  publicKeyObject: ReturnType<typeof createPublicKey>
}

/** A fresh ed25519 identity: the seed is the PKCS#8 DER's last 32 bytes, the key the SPKI's. */
function makeIdentity(org: string): TestIdentity {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519')
  const seed = new Uint8Array(privateKey.export({ type: 'pkcs8', format: 'der' }).subarray(-32))
  const raw = new Uint8Array(publicKey.export({ type: 'spki', format: 'der' }).subarray(-32))
  const key = base64url(raw)
  return {
    org,
    key,
    party: { org, key },
    signer: { publicKey: raw, sign: (message) => ed.sign(message, seed) },
    publicKeyObject: publicKey,
  }
}

const provider = makeIdentity('Acme Charging')
const consumer = makeIdentity('GridCo')
const stranger = makeIdentity('Mallory Ltd')

const DAY = 86_400_000
const T0 = Date.UTC(2030, 0, 1)
const TELEMETRY: Grant = {
  data: 'telemetry',
  kinds: ['evse'],
  quantities: ['power', 'energy_import'],
  minIntervalMs: 60_000,
}
const CONTROL: Grant = {
  data: 'control',
  kinds: ['evse', 'station'],
  rids: ['cs-1', 'cs-2'],
  commands: ['limit_power'],
  bounds: { limit_power: { min: 0, max: 22_000 } },
}

function input(overrides: Partial<NewAgreementInput> = {}): NewAgreementInput {
  return {
    provider: provider.party,
    consumer: consumer.party,
    purpose: 'Smart charging pilot, Lot 4',
    validFrom: T0,
    validUntil: T0 + 30 * DAY,
    grants: [TELEMETRY, CONTROL],
    limits: { maxRecordsPerSec: 500 },
    now: T0 - DAY,
    ...overrides,
  }
}

const body = newAgreementBody(input())
const id = agreementId(body)

/** A body as plain JSON, which the tests below damage field by field. */
// biome-ignore lint/suspicious/noExplicitAny: damaging arbitrary fields is the point of these tests
type LooseBody = Record<string, any>

/** A plain, JSON-cloned copy of the body to damage. */
const plainBody = (): LooseBody => JSON.parse(JSON.stringify(body))

function signed(roles: ('provider' | 'consumer')[], target: AgreementBody = body): AgreementDocument {
  const targetId = agreementId(target)
  const signatures: AgreementDocument['signatures'] = {}
  if (roles.includes('provider')) signatures.provider = signId(targetId, provider.signer)
  if (roles.includes('consumer')) signatures.consumer = signId(targetId, consumer.signer)
  return { body: target, signatures }
}

describe('test identities', () => {
  it('derive the public key from the PKCS#8 seed the same way node:crypto does', () => {
    const { privateKey } = generateKeyPairSync('ed25519')
    const seed = new Uint8Array(privateKey.export({ type: 'pkcs8', format: 'der' }).subarray(-32))
    const spki = createPublicKey(privateKey).export({ type: 'spki', format: 'der' })
    expect(Buffer.from(ed.getPublicKey(seed)).equals(spki.subarray(-32))).toBe(true)
  })
})

describe('newAgreementBody and agreementId', () => {
  it('builds a version 1 body with a fresh 32-hex nonce and onwardSharing false', () => {
    expect(body.v).toBe(1)
    expect(body.nonce).toMatch(/^[0-9a-f]{32}$/)
    expect(body.onwardSharing).toBe(false)
    expect(body.created).toBe(T0 - DAY)
    expect(body.grants).toEqual([TELEMETRY, CONTROL])
    expect(newAgreementBody(input()).nonce).not.toBe(body.nonce)
  })

  it('is 64 lowercase hex: the SHA-256 of the canonical body', () => {
    expect(id).toMatch(/^[0-9a-f]{64}$/)
    expect(id).toBe(createHash('sha256').update(encodeCanonical(body)).digest('hex'))
    expect(Buffer.from(encodeBody(body)).equals(Buffer.from(encodeCanonical(body)))).toBe(true)
  })

  it('is stable: recomputing, cloning, reordering keys or a CBOR round trip give the same id', () => {
    expect(agreementId(body)).toBe(id)
    expect(agreementId(structuredClone(body))).toBe(id)
    const reordered = Object.fromEntries(Object.entries(plainBody()).reverse()) as AgreementBody
    expect(agreementId(reordered)).toBe(id)
    expect(agreementId(parseAgreementBody(decodeFederationCbor(encodeBody(body))))).toBe(id)
  })

  it('differs for two bodies from the same input (the nonce)', () => {
    expect(agreementId(newAgreementBody(input()))).not.toBe(id)
  })

  const changes: [string, (b: LooseBody) => void][] = [
    ['provider.org', (b) => (b.provider.org = 'Acme Charging BV')],
    ['provider.key', (b) => (b.provider.key = stranger.key)],
    ['consumer.org', (b) => (b.consumer.org = 'GridCo ')],
    ['consumer.key', (b) => (b.consumer.key = stranger.key)],
    ['purpose', (b) => (b.purpose = 'Smart charging pilot, Lot 5')],
    ['created', (b) => (b.created += 1)],
    ['validFrom', (b) => (b.validFrom += 1)],
    ['validUntil', (b) => (b.validUntil += 1)],
    ['nonce', (b) => (b.nonce = '0'.repeat(32))],
    ['a quantity', (b) => b.grants[0].quantities.push('voltage')],
    ['minIntervalMs', (b) => (b.grants[0].minIntervalMs = 59_999)],
    ['the order of kinds', (b) => b.grants[1].kinds.reverse()],
    ['the order of grants', (b) => b.grants.reverse()],
    ['a bound', (b) => (b.grants[1].bounds.limit_power.max = 22_000.5)],
    ['a rid', (b) => (b.grants[1].rids[1] = 'cs-3')],
    ['limits', (b) => (b.limits.maxRecordsPerSec = 501)],
    ['limits removed', (b) => delete b.limits],
  ]

  it.each(changes)('changes when %s changes', (_, change) => {
    const copy = plainBody()
    change(copy)
    expect(agreementId(parseAgreementBody(copy))).not.toBe(id)
  })

  it('gives every one of those changes its own id', () => {
    const ids = changes.map(([, change]) => {
      const copy = plainBody()
      change(copy)
      return agreementId(parseAgreementBody(copy))
    })
    expect(new Set([id, ...ids]).size).toBe(changes.length + 1)
  })
})

describe('parseAgreementBody', () => {
  it('accepts a valid body and returns an equal one', () => {
    expect(parseAgreementBody(plainBody())).toEqual(body)
  })

  it('accepts exactly 64 grants', () => {
    const copy = plainBody()
    copy.grants = Array.from({ length: 64 }, () => TELEMETRY)
    expect(parseAgreementBody(copy).grants).toHaveLength(64)
  })

  const key43 = 'A'.repeat(43)
  const refusals: [string, (b: LooseBody) => void, string][] = [
    ['an unknown field', (b) => (b.extra = 1), 'body.extra'],
    ['an unknown party field', (b) => (b.provider.peerId = 'x'), 'body.provider.peerId'],
    ['v 2', (b) => (b.v = 2), 'body.v'],
    ['v "1"', (b) => (b.v = '1'), 'body.v'],
    ['a missing v', (b) => delete b.v, 'body.v'],
    ['the same key on both sides', (b) => (b.consumer.key = b.provider.key), 'body.consumer.key'],
    ['a key that is too short', (b) => (b.provider.key = 'abc'), 'body.provider.key'],
    ['a key in standard base64', (b) => (b.provider.key = `${key43.slice(0, 42)}+`), 'body.provider.key'],
    ['a key that is not text', (b) => (b.consumer.key = 42), 'body.consumer.key'],
    ['an empty org', (b) => (b.provider.org = ''), 'body.provider.org'],
    ['an empty purpose', (b) => (b.purpose = ''), 'body.purpose'],
    ['a purpose over 1000 characters', (b) => (b.purpose = 'x'.repeat(1001)), 'body.purpose'],
    ['a fractional created', (b) => (b.created = 1.5), 'body.created'],
    ['a negative validFrom', (b) => (b.validFrom = -1), 'body.validFrom'],
    ['validUntil equal to validFrom', (b) => (b.validUntil = b.validFrom), 'body.validUntil'],
    ['validUntil before validFrom', (b) => (b.validUntil = b.validFrom - 1), 'body.validUntil'],
    ['a short nonce', (b) => (b.nonce = 'abc'), 'body.nonce'],
    ['an uppercase nonce', (b) => (b.nonce = 'A'.repeat(32)), 'body.nonce'],
    ['no grants', (b) => (b.grants = []), 'body.grants'],
    ['grants that are not a list', (b) => (b.grants = TELEMETRY), 'body.grants'],
    ['65 grants', (b) => (b.grants = Array.from({ length: 65 }, () => TELEMETRY)), 'body.grants'],
    ['a grant that is not an object', (b) => (b.grants[1] = 'telemetry'), 'body.grants[1]'],
    ['an unknown data', (b) => (b.grants[0].data = 'weather'), 'body.grants[0].data'],
    ['a field of another data', (b) => (b.grants[0].attrs = ['name']), 'body.grants[0].attrs'],
    ['duplicate kinds', (b) => (b.grants[1].kinds = ['evse', 'evse']), 'body.grants[1].kinds[1]'],
    ['an unknown kind', (b) => (b.grants[0].kinds = ['toaster']), 'body.grants[0].kinds[0]'],
    ['no kinds', (b) => (b.grants[0].kinds = []), 'body.grants[0].kinds'],
    ['an unknown quantity', (b) => (b.grants[0].quantities[1] = 'wattage'), 'body.grants[0].quantities[1]'],
    ['a bad rid', (b) => (b.grants[1].rids[0] = 'cs 1'), 'body.grants[1].rids[0]'],
    ['a bad site', (b) => (b.grants[0].sites = ['-site']), 'body.grants[0].sites[0]'],
    ['a fractional minIntervalMs', (b) => (b.grants[0].minIntervalMs = 0.5), 'body.grants[0].minIntervalMs'],
    ['a bad command', (b) => (b.grants[1].commands = ['Limit Power']), 'body.grants[1].commands[0]'],
    [
      'bounds with min above max',
      (b) => (b.grants[1].bounds.limit_power = { min: 10, max: 5 }),
      'body.grants[1].bounds.limit_power',
    ],
    [
      'bounds for a command not granted',
      (b) => (b.grants[1].bounds.reboot = { max: 1 }),
      'body.grants[1].bounds.reboot',
    ],
    [
      'a bound that is not a number',
      (b) => (b.grants[1].bounds.limit_power.max = '22000'),
      'body.grants[1].bounds.limit_power.max',
    ],
    ['onwardSharing true', (b) => (b.onwardSharing = true), 'body.onwardSharing'],
    ['onwardSharing missing', (b) => delete b.onwardSharing, 'body.onwardSharing'],
    ['limits.maxRecordsPerSec 0', (b) => (b.limits.maxRecordsPerSec = 0), 'body.limits.maxRecordsPerSec'],
    ['an unknown limit', (b) => (b.limits.maxBytesPerSec = 5), 'body.limits.maxBytesPerSec'],
  ]

  it.each(refusals)('refuses %s with an AgreementFormatError naming the path', (_, damage, path) => {
    const copy = plainBody()
    damage(copy)
    const error = thrown(() => parseAgreementBody(copy))
    expect(error.name).toBe('AgreementFormatError')
    expect(error.path).toBe(path)
    expect(error.message).toContain(path)
  })

  it.each([null, 'body', [], 42])('refuses %j as a body', (value) => {
    const error = thrown(() => parseAgreementBody(value))
    expect(error.name).toBe('AgreementFormatError')
    expect(error.path).toBe('body')
  })

  // Regression: names inherited from Object.prototype once passed `data in GRANT_KEYS` and a
  // TypeError escaped instead of an AgreementFormatError.
  for (const data of ['constructor', 'toString', '__proto__', 'hasOwnProperty']) {
    test(`refuses grant data '${data}' with AgreementFormatError`, () => {
      const copy = plainBody()
      copy.grants[0] = { data, kinds: ['evse'] }
      const error = thrown(() => parseAgreementBody(copy))
      expect(error.name).toBe('AgreementFormatError')
      expect(error.path).toBe('body.grants[0].data')
    })
  }

  /** The same 32 key bytes with a different last character (its 2 unused low bits set). */
  function respell(key: string): string {
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
    return key.slice(0, 42) + alphabet[alphabet.indexOf(key[42]!) + 1]
  }

  it('(precondition) a respelled key is different text for the same key bytes', () => {
    const alias = respell(provider.key)
    expect(alias).not.toBe(provider.key)
    expect(Buffer.from(alias, 'base64url').equals(Buffer.from(provider.key, 'base64url'))).toBe(true)
  })

  // Regression: the last base64url character carries 2 unused bits, so one key has 4 spellings;
  // only the canonical one is accepted, so the same-key check cannot be bypassed.
  test('refuses the provider key, spelled differently, as the consumer key', () => {
    const copy = plainBody()
    copy.consumer.key = respell(copy.provider.key)
    const error = thrown(() => parseAgreementBody(copy))
    expect(error.name).toBe('AgreementFormatError')
  })

  // Regression: a body with a huge bound once validated and then had no id (the encoder refused
  // integral numbers of 2^53 and above; they now travel as floats).
  test('a body that validates can always be given an id (bound 1e20)', () => {
    let large: AgreementBody
    try {
      large = newAgreementBody(input({ grants: [{ ...CONTROL, bounds: { limit_power: { max: 1e20 } } }] }))
    } catch (error) {
      expect((error as Error).name).toBe('AgreementFormatError')
      return
    }
    expect(agreementId(large)).toMatch(/^[0-9a-f]{64}$/)
  })
})

describe('parseAgreementDocument', () => {
  it.each([
    ['the provider', ['provider'] as const],
    ['the consumer', ['consumer'] as const],
    ['both parties', ['provider', 'consumer'] as const],
  ])('accepts a document signed by %s and recomputes its id', (_, roles) => {
    const doc = signed([...roles])
    const parsed = parseAgreementDocument(JSON.parse(JSON.stringify(doc)))
    expect(parsed.id).toBe(id)
    expect(parsed.doc).toEqual(doc)
    expect(Object.keys(parsed.doc.signatures).sort()).toEqual([...roles].sort())
  })

  it('produces signatures any ed25519 implementation verifies over the 32 id bytes', () => {
    const doc = signed(['provider', 'consumer'])
    const idBytes = Buffer.from(id, 'hex')
    expect(
      verify(null, idBytes, provider.publicKeyObject, Buffer.from(doc.signatures.provider!, 'base64url')),
    ).toBe(true)
    expect(
      verify(null, idBytes, consumer.publicKeyObject, Buffer.from(doc.signatures.consumer!, 'base64url')),
    ).toBe(true)
  })

  it('accepts a document that went through CBOR', () => {
    const doc = signed(['provider', 'consumer'])
    expect(parseAgreementDocument(decodeFederationCbor(encodeCanonical(doc))).id).toBe(id)
  })

  it.each([
    ['no signatures map', { body }],
    ['an empty signatures map', { body, signatures: {} }],
  ])('refuses %s with BadSignatureError', (_, value) => {
    expect(thrown(() => parseAgreementDocument(value)).name).toBe('BadSignatureError')
  })

  it('refuses a provider signature made by a third key', () => {
    const value = { body, signatures: { provider: signId(id, stranger.signer) } }
    expect(thrown(() => parseAgreementDocument(value)).name).toBe('BadSignatureError')
  })

  it('refuses a body altered after signing', () => {
    const doc = signed(['provider', 'consumer'])
    const altered = { ...doc, body: { ...doc.body, purpose: `${doc.body.purpose}, and resale` } }
    expect(thrown(() => parseAgreementDocument(altered)).name).toBe('BadSignatureError')
    const extended = JSON.parse(JSON.stringify(doc))
    extended.body.validUntil += DAY
    expect(thrown(() => parseAgreementDocument(extended)).name).toBe('BadSignatureError')
  })

  it('refuses a signature moved to the other role', () => {
    const doc = signed(['provider'])
    const moved = { body, signatures: { consumer: doc.signatures.provider } }
    expect(thrown(() => parseAgreementDocument(moved)).name).toBe('BadSignatureError')
  })

  it('refuses a valid signature next to a bad one', () => {
    const doc = signed(['provider'])
    const value = {
      body,
      signatures: { provider: doc.signatures.provider, consumer: signId(id, stranger.signer) },
    }
    expect(thrown(() => parseAgreementDocument(value)).name).toBe('BadSignatureError')
  })

  it('refuses a signature of another body by the right key', () => {
    const other = newAgreementBody(input())
    const value = { body, signatures: { provider: signId(agreementId(other), provider.signer) } }
    expect(thrown(() => parseAgreementDocument(value)).name).toBe('BadSignatureError')
  })

  it.each([
    ['a number', 42],
    ['a short string', 'abc'],
    ['the signature bytes', new Uint8Array(64)],
  ])('refuses a signature that is %s with BadSignatureError', (_, signature) => {
    expect(thrown(() => parseAgreementDocument({ body, signatures: { provider: signature } })).name).toBe(
      'BadSignatureError',
    )
  })

  it('refuses unknown fields next to body and signatures with AgreementFormatError', () => {
    const doc = signed(['provider'])
    const error = thrown(() => parseAgreementDocument({ ...doc, id }))
    expect(error.name).toBe('AgreementFormatError')
    expect(error.path).toBe('id')
    const role = thrown(() =>
      parseAgreementDocument({ body, signatures: { ...doc.signatures, witness: 'x' } }),
    )
    expect(role.name).toBe('AgreementFormatError')
    expect(role.path).toBe('signatures.witness')
  })

  it('checks the body before the signatures', () => {
    const doc = signed(['provider'])
    const error = thrown(() => parseAgreementDocument({ ...doc, body: { ...doc.body, v: 2 } }))
    expect(error.name).toBe('AgreementFormatError')
    expect(error.path).toBe('body.v')
  })
})

describe('signTermination and parseTermination', () => {
  const AT = T0 + 2 * DAY

  it.each(['reject', 'revoke'] as const)('round-trip a %s, also through CBOR', (kind) => {
    const termination = signTermination(kind, id, 'contract ended', consumer.signer, AT)
    expect(termination).toMatchObject({ id, by: consumer.key, at: AT, reason: 'contract ended' })
    expect(parseTermination(kind, termination)).toEqual(termination)
    expect(parseTermination(kind, decodeFederationCbor(encodeCanonical(termination)))).toEqual(termination)
  })

  it('stamps the current time when no time is given', () => {
    const before = Date.now()
    const termination = signTermination('revoke', id, '', provider.signer)
    expect(termination.at).toBeGreaterThanOrEqual(before)
    expect(termination.at).toBeLessThanOrEqual(Date.now())
    expect(parseTermination('revoke', termination).reason).toBe('')
  })

  const forgeries: [string, (t: Termination) => Termination][] = [
    ['an altered reason', (t) => ({ ...t, reason: `${t.reason}!` })],
    ['another key in by', (t) => ({ ...t, by: stranger.key })],
    ['the other party in by', (t) => ({ ...t, by: provider.key })],
    ['an altered time', (t) => ({ ...t, at: t.at - 1 })],
    ['another agreement id', (t) => ({ ...t, id: 'f'.repeat(64) })],
    ['a truncated signature', (t) => ({ ...t, sig: t.sig.slice(0, 80) })],
    ['no signature', ({ sig: _, ...t }) => t as Termination],
  ]

  it.each(forgeries)('refuses a revocation with %s with BadSignatureError', (_, forge) => {
    const termination = signTermination('revoke', id, 'breach of terms', consumer.signer, AT)
    expect(thrown(() => parseTermination('revoke', forge(termination))).name).toBe('BadSignatureError')
  })

  it('refuses a termination re-signed by a third key that names a party in by', () => {
    const forged = signTermination('revoke', id, 'breach of terms', stranger.signer, AT)
    expect(thrown(() => parseTermination('revoke', { ...forged, by: consumer.key })).name).toBe(
      'BadSignatureError',
    )
  })

  it('does not accept a rejection as a revocation, nor the reverse', () => {
    const rejection = signTermination('reject', id, 'no', consumer.signer, AT)
    const revocation = signTermination('revoke', id, 'no', consumer.signer, AT)
    expect(thrown(() => parseTermination('revoke', rejection)).name).toBe('BadSignatureError')
    expect(thrown(() => parseTermination('reject', revocation)).name).toBe('BadSignatureError')
  })

  it.each([
    ['a bad id', { id: 'xyz' }, 'revoke.id'],
    ['an uppercase id', { id: 'A'.repeat(64) }, 'revoke.id'],
    ['a bad key in by', { by: 'nope' }, 'revoke.by'],
    ['a negative time', { at: -5 }, 'revoke.at'],
    ['a reason that is not text', { reason: 5 }, 'revoke.reason'],
    ['a reason over 1000 characters', { reason: 'x'.repeat(1001) }, 'revoke.reason'],
    ['an unknown field', { note: 'x' }, 'revoke.note'],
  ])('refuses %s with AgreementFormatError naming the path', (_, change, path) => {
    const termination = signTermination('revoke', id, 'ok', consumer.signer, AT)
    const error = thrown(() => parseTermination('revoke', { ...termination, ...change }))
    expect(error.name).toBe('AgreementFormatError')
    expect(error.path).toBe(path)
  })
})

describe('agreementState', () => {
  const proposed = signed(['provider'])
  const both = signed(['provider', 'consumer'])
  const rejection = signTermination('reject', id, 'no thanks', consumer.signer, T0 - DAY)
  const revocation = signTermination('revoke', id, 'ended', provider.signer, T0 + DAY)
  const { validFrom, validUntil } = body

  it.each([
    ['proposed', proposed, {}, validFrom - DAY],
    ['proposed', proposed, {}, validFrom + DAY],
    ['proposed', signed(['consumer']), {}, validFrom + DAY],
    ['accepted', both, {}, validFrom - 1],
    ['active', both, {}, validFrom],
    ['active', both, {}, validUntil - 1],
    ['expired', both, {}, validUntil],
    ['expired', both, {}, validUntil + DAY],
    ['expired', proposed, {}, validUntil],
    ['rejected', proposed, { rejection }, validFrom - DAY],
    ['rejected', proposed, { rejection }, validUntil + DAY],
    ['revoked', both, { revocation }, validFrom + DAY],
    ['revoked', both, { revocation }, validUntil + DAY],
    ['revoked', both, { revocation }, validFrom - DAY],
    ['revoked', proposed, { rejection, revocation }, validFrom],
  ] as const)('is %s (%#)', (state, doc, terminations, now) => {
    expect(agreementState(doc, terminations, now)).toBe(state)
  })

  it('uses the clock when no time is given', () => {
    const current = signed(
      ['provider', 'consumer'],
      newAgreementBody(input({ validFrom: Date.now() - DAY, validUntil: Date.now() + DAY })),
    )
    expect(agreementState(current, {})).toBe('active')
    const past = signed(
      ['provider', 'consumer'],
      newAgreementBody(input({ validFrom: Date.now() - 2 * DAY, validUntil: Date.now() - DAY })),
    )
    expect(agreementState(past, {})).toBe('expired')
  })
})

describe('exportAgreement and importAgreement', () => {
  const doc = signed(['provider', 'consumer'])
  const text = exportAgreement(id, doc, 'accepted')

  it('writes an armored block with readable headers and lines short enough for mail', () => {
    const lines = text.split('\n')
    expect(lines[0]).toBe('-----BEGIN OE AGREEMENT-----')
    expect(text).toContain(`Id: ${id}\n`)
    expect(text).toContain('State: accepted (signed by provider and consumer)')
    expect(text).toContain('Provider: Acme Charging\n')
    expect(text).toContain('Consumer: GridCo\n')
    expect(text).toContain('-----END OE AGREEMENT-----')
    // RFC 5322 asks for lines of at most 78 characters; the base64 is wrapped at 64.
    for (const line of lines) expect(line.length).toBeLessThanOrEqual(78)
    const payload = lines.slice(lines.indexOf('') + 1, lines.indexOf('-----END OE AGREEMENT-----'))
    expect(payload.length).toBeGreaterThan(1)
    for (const line of payload) expect(line).toMatch(/^[A-Za-z0-9+/=]{1,64}$/)
  })

  it('round-trips the document and its id', () => {
    expect(importAgreement(text)).toEqual({ id, doc })
    const one = signed(['consumer'])
    const oneText = exportAgreement(id, one, 'proposed')
    expect(oneText).toContain('State: proposed (signed by consumer)')
    expect(importAgreement(oneText)).toEqual({ id, doc: one })
  })

  const lines = text.split('\n')
  it.each([
    ["'> ' quoting", lines.map((line) => `> ${line}`).join('\n')],
    ["two levels of '>' quoting", lines.map((line) => `> > ${line}`).join('\n')],
    ["'>' quoting without a space", lines.map((line) => `>${line}`).join('\n')],
    ['CRLF line ends', lines.join('\r\n')],
    ['leading indentation', lines.map((line) => `    ${line}`).join('\n')],
    ['tab indentation and trailing spaces', lines.map((line) => `\t${line}  `).join('\n')],
    ['text before and after', `Hi Bob,\n\nhere is the agreement:\n\n${text}\nRegards,\nAlice\n-- \nAcme`],
    [
      'extra headers',
      text.replace('\nProvider:', '\nComment: forwarded by the legal team\nX-Ticket: OPS-1234\nProvider:'),
    ],
    ['no headers at all', lines.filter((line) => !/^[A-Za-z]+: /.test(line)).join('\n')],
    ['quoting, CRLF and indentation together', lines.map((line) => `>   ${line}`).join('\r\n')],
  ])('survives %s', (_, mangled) => {
    expect(importAgreement(mangled)).toEqual({ id, doc })
  })

  it.each([
    ['an empty text', ''],
    ['a text without the armor', 'Hello, no agreement here'],
    ['the base64 without the armor', lines.slice(6, -2).join('\n')],
    ['a block without its end line', lines.slice(0, -2).join('\n')],
    ['a block cut off in the middle', lines.slice(0, 9).join('\n')],
    ['an end line before the begin line', `${lines.at(-2)}\n${lines.slice(0, -2).join('\n')}`],
    ['a payload with a character that is not base64', text.replace(/\n([A-Za-z0-9+/]{10})/, '\n$1*')],
  ])('refuses %s with AgreementFormatError', (_, damaged) => {
    expect(thrown(() => importAgreement(damaged)).name).toBe('AgreementFormatError')
  })

  it('refuses a block with a payload line missing', () => {
    const payloadStart = lines.indexOf('') + 1
    const missing = [...lines.slice(0, payloadStart + 2), ...lines.slice(payloadStart + 3)].join('\n')
    expect(['AgreementFormatError', 'BadSignatureError']).toContain(
      thrown(() => importAgreement(missing)).name,
    )
  })

  /** Base64 and the position of the purpose's first full 3-byte group inside it. */
  const encoded = Buffer.from(encodeCanonical(doc))
  const base64 = encoded.toString('base64')
  const purposeAt = encoded.indexOf(Buffer.from(body.purpose))
  const groupInPurpose = Math.ceil(purposeAt / 3)

  it('refuses a changed base64 character inside the purpose with BadSignatureError', () => {
    // The 4th character of a group carries the low 6 bits of its 3rd byte: flipping its lowest
    // bit turns one ASCII letter of the purpose into another, so the CBOR stays well formed.
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
    const at = groupInPurpose * 4 + 3
    const changed = base64.slice(0, at) + alphabet[alphabet.indexOf(base64[at]!) ^ 1] + base64.slice(at + 1)
    const decoded = decodeFederationCbor(Buffer.from(changed, 'base64')) as AgreementDocument
    expect(decoded.body.purpose).not.toBe(body.purpose) // the change did land in the purpose
    const rewrapped = text.replace(
      /\n\n[\s\S]*\n-----END/,
      `\n\n${(changed.match(/.{1,64}/g) ?? []).join('\n')}\n-----END`,
    )
    expect(rewrapped).not.toBe(text)
    expect(thrown(() => importAgreement(rewrapped)).name).toBe('BadSignatureError')
  })

  it('never accepts a changed base64 character unless the document is unchanged', () => {
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
    const outcomes = new Set<string>()
    for (let at = 0; at < base64.length - 4; at += 5) {
      const replacement = alphabet[(alphabet.indexOf(base64[at]!) + 17) % 64]!
      const changed = base64.slice(0, at) + replacement + base64.slice(at + 1)
      const damaged = text.replace(
        /\n\n[\s\S]*\n-----END/,
        `\n\n${(changed.match(/.{1,64}/g) ?? []).join('\n')}\n-----END`,
      )
      try {
        const result = importAgreement(damaged)
        expect(result.id).toBe(id)
        expect(result.doc.body).toEqual(body)
        outcomes.add('same document')
      } catch (error) {
        expect(['AgreementFormatError', 'BadSignatureError']).toContain((error as Error).name)
        outcomes.add((error as Error).name)
      }
    }
    expect(outcomes.has('BadSignatureError')).toBe(true)
  })

  it('refuses an Id line that does not match the content with FederationError', () => {
    const other = 'a'.repeat(64)
    const error = thrown(() => importAgreement(text.replace(`Id: ${id}`, `Id: ${other}`)))
    expect(error.name).toBe('FederationError')
    expect(error.message).toContain(other)
  })

  it('refuses oversized input with AgreementFormatError before reading it', () => {
    expect(thrown(() => importAgreement(`${text}\n${'x'.repeat(256 * 1024)}`)).name).toBe(
      'AgreementFormatError',
    )
    expect(thrown(() => importAgreement('x'.repeat(10 * 1024 * 1024))).name).toBe('AgreementFormatError')
  })

  it('refuses a block whose signatures do not verify with BadSignatureError', () => {
    const forged = { body, signatures: { provider: signId(id, stranger.signer) } }
    expect(thrown(() => importAgreement(exportAgreement(id, forged, 'proposed'))).name).toBe(
      'BadSignatureError',
    )
  })
})
