/**
 * Seeded fuzzing of the decoders that take bytes from strangers, called directly: node cards,
 * agreements (CBOR and their armored text form), federation frames and batch bodies, OCPI 2.2.1
 * objects and 2030.5 XML (with entity expansion and external entities, which must be refused).
 * Each decoder either returns a value or throws its own named error: never a TypeError, a
 * RangeError or a hang. The same seed gives the same inputs, so a failure reproduces.
 * (CBOR and the telemetry validator: data-plane/fuzz.test.ts; random byte mutations of batch
 * bodies: federation/batch-codec.test.ts; the HTTP router: http-input.test.ts.)
 */
import { generateKeyPairSync } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import * as ed from '@noble/ed25519'
import { describe, expect, test } from 'vitest'
import { DecodeError } from '../../data-plane/index.ts'
import {
  agreementId,
  encodeBody,
  exportAgreement,
  importAgreement,
  newAgreementBody,
  parseAgreementDocument,
  signId,
} from '../../federation/agreement.ts'
import { decodeBatchBody } from '../../federation/batch-codec.ts'
import { decodeFederationCbor, encodeCanonical } from '../../federation/canonical-cbor.ts'
import { FederationError } from '../../federation/errors.ts'
import { decodeFramePayload, encodeFrame, FrameDecoder, MAX_FRAME_BYTES } from '../../federation/frames.ts'
import { createCard, parseCard } from '../../node/card.ts'
import { CardError } from '../../node/errors.ts'
import { identityFromKeyObject } from '../../node/identity.ts'
import { parseXml } from '../../plugins/ieee2030-5/codec.ts'
import { CsipXmlError } from '../../plugins/ieee2030-5/errors.ts'
import { ocpi221 } from '../../plugins/ocpi/v221.ts'
import { prng } from '../helpers/check.ts'

type Random = () => number
const int = (random: Random, max: number): number => Math.floor(random() * max)
const pick = <T>(random: Random, items: readonly T[]): T => items[int(random, items.length)]!

/** Flip, insert, delete or duplicate a few bytes. */
function mutate(bytes: Uint8Array, random: Random): Uint8Array {
  const out = [...bytes]
  const edits = 1 + int(random, 4)
  for (let e = 0; e < edits; e++) {
    const at = int(random, out.length + 1)
    const kind = random()
    if (kind < 0.35 && out.length > 0) out[Math.min(at, out.length - 1)] = int(random, 256)
    else if (kind < 0.55) out.splice(at, 1)
    else if (kind < 0.75) out.splice(at, 0, int(random, 256))
    else if (kind < 0.9) out.splice(at, 0, ...out.slice(at, at + 1 + int(random, 16)))
    // A CBOR head claiming a huge length.
    else out.splice(at, 0, pick(random, [0x5b, 0x7b, 0x9b, 0xbb]), 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0)
  }
  return new Uint8Array(out)
}

const mutateText = (text: string, random: Random): string =>
  Buffer.from(mutate(new Uint8Array(Buffer.from(text, 'latin1')), random)).toString('latin1')

/** A random JSON-ish value: the shapes a hostile partner sends in place of an object. */
function randomValue(random: Random, depth = 0): unknown {
  const kind = int(random, depth > 3 ? 6 : 9)
  switch (kind) {
    case 0:
      return null
    case 1:
      return random() < 0.5
    case 2:
      return pick(random, [0, -1, 1e308, -1e308, Number.MAX_SAFE_INTEGER + 2, 0.1, 2 ** 53, Number.NaN])
    case 3:
      return pick(random, [
        '',
        'x'.repeat(int(random, 5000)),
        '2024-13-45T99:99:99Z',
        'NL',
        '\u0000',
        '💥',
        '__proto__',
      ])
    case 4:
      return new Date(int(random, 2 ** 42)).toISOString()
    case 5:
      return String(int(random, 1e6))
    case 6:
      return Array.from({ length: int(random, 5) }, () => randomValue(random, depth + 1))
    default: {
      const object: Record<string, unknown> = {}
      const keys = [
        'id',
        'uid',
        'type',
        'status',
        'evses',
        'connectors',
        'country_code',
        'party_id',
        'last_updated',
        'token',
        'url',
        'roles',
        'elements',
        '__proto__',
        'constructor',
      ]
      for (let i = int(random, 6); i > 0; i--) object[pick(random, keys)] = randomValue(random, depth + 1)
      return object
    }
  }
}

/** Run `decode`; anything thrown must be one of `allowed` (named errors), never a crash. */
function expectOnlyNamedErrors(
  decode: () => unknown,
  allowed: readonly (new (...args: never[]) => Error)[],
  what: string,
) {
  try {
    decode()
  } catch (error) {
    const ok = allowed.some((type) => error instanceof type)
    if (!ok) throw new Error(`${what}: ${(error as Error)?.name}: ${(error as Error)?.message}`)
  }
}

describe('node card', () => {
  test('4,000 mutations of a real card: parsed or CardError, and no altered card verifies', () => {
    const identity = identityFromKeyObject(generateKeyPairSync('ed25519').privateKey)
    const { text } = createCard(identity, 'Fuzz Org', ['/ip4/127.0.0.1/tcp/7400'])
    const random = prng(1601)
    let verified = 0
    for (let i = 0; i < 4_000; i++) {
      const input =
        random() < 0.5
          ? mutateText(text, random)
          : `oe1${Buffer.from(mutate(Buffer.from(text.slice(3), 'base64url'), random)).toString('base64url')}`
      try {
        const card = parseCard(input)
        // A mutation that verifies decodes to the same card (e.g. base64 padding bits).
        expect(card.publicKey).toBe(Buffer.from(identity.publicKey).toString('base64url'))
        expect(card.org).toBe('Fuzz Org')
        verified++
      } catch (error) {
        if (!(error instanceof CardError))
          throw new Error(`case ${i}: ${(error as Error).name}: ${(error as Error).message}`)
      }
    }
    expect(verified).toBeLessThan(4_000)
  })
})

describe('agreements', () => {
  const key = () => {
    const { privateKey, publicKey } = generateKeyPairSync('ed25519')
    const seed = new Uint8Array(privateKey.export({ type: 'pkcs8', format: 'der' }).subarray(-32))
    const raw = new Uint8Array(publicKey.export({ type: 'spki', format: 'der' }).subarray(-32))
    return { raw, sign: (message: Uint8Array) => ed.sign(message, seed) }
  }
  const provider = key()
  const consumer = key()
  const b64 = (bytes: Uint8Array) => Buffer.from(bytes).toString('base64url')
  const body = newAgreementBody({
    provider: { org: 'Acme', key: b64(provider.raw) },
    consumer: { org: 'GridCo', key: b64(consumer.raw) },
    purpose: 'fuzz',
    validFrom: Date.UTC(2030, 0, 1),
    validUntil: Date.UTC(2031, 0, 1),
    grants: [{ data: 'telemetry', kinds: ['evse'], quantities: ['power'] } as never],
    now: Date.UTC(2029, 0, 1),
  })
  const id = agreementId(body)
  const doc = {
    body,
    signatures: { provider: signId(id, { publicKey: provider.raw, sign: provider.sign }) },
  }
  const cbor = encodeCanonical(doc)

  test('the document decodes as sent (the corpus is valid)', () => {
    expect(parseAgreementDocument(decodeFederationCbor(cbor)).id).toBe(id)
    expect(encodeBody(body).length).toBeGreaterThan(0)
  })

  test('5,000 CBOR mutations: a FederationError, or the same id with its signature checked', () => {
    const random = prng(1602)
    for (let i = 0; i < 5_000; i++) {
      const input = mutate(cbor, random)
      try {
        const parsed = parseAgreementDocument(decodeFederationCbor(input))
        // A body that still verifies was not changed where the signature covers it.
        expect(parsed.id).toBe(id)
      } catch (error) {
        if (!(error instanceof FederationError) && !(error instanceof DecodeError))
          throw new Error(`case ${i}: ${(error as Error).name}: ${(error as Error).message}`)
      }
    }
  })

  test('2,000 mutations of the armored text form: imported unchanged, or a FederationError', () => {
    const text = exportAgreement(id, doc as never, 'proposed')
    const random = prng(1603)
    for (let i = 0; i < 2_000; i++) {
      const input =
        random() < 0.7
          ? mutateText(text, random)
          : text.replace(/[A-Za-z0-9+/]{8}/, pick(random, ['AAAAAAAA', '////////', '!!!!!!!!']))
      try {
        expect(importAgreement(input).id).toBe(id)
      } catch (error) {
        if (!(error instanceof FederationError))
          throw new Error(`case ${i}: ${(error as Error).name}: ${(error as Error).message}`)
      }
    }
  })

  test('random values in place of a document: AgreementFormatError or BadSignatureError', () => {
    const random = prng(1604)
    for (let i = 0; i < 5_000; i++) {
      const value =
        random() < 0.5
          ? randomValue(random)
          : { body: { ...body, ...(randomValue(random) as object) }, signatures: randomValue(random) }
      expectOnlyNamedErrors(() => parseAgreementDocument(value), [FederationError], `case ${i}`)
    }
  })
})

describe('federation frames', () => {
  test('random and mutated byte streams, pushed in random pieces: frames or FrameError', () => {
    const random = prng(1605)
    const valid = encodeFrame({ type: 'hello', n: 1, s: 'x'.repeat(100) })
    let frames = 0
    for (let i = 0; i < 3_000; i++) {
      const decoder = new FrameDecoder()
      const stream =
        random() < 0.5
          ? mutate(new Uint8Array([...valid, ...valid]), random)
          : new Uint8Array(Array.from({ length: int(random, 300) }, () => int(random, 256)))
      try {
        for (let at = 0; at < stream.length; ) {
          const size = 1 + int(random, 40)
          decoder.push(stream.subarray(at, at + size))
          at += size
          for (let payload = decoder.take(); payload; payload = decoder.take()) {
            expect(payload.length).toBeLessThanOrEqual(MAX_FRAME_BYTES)
            try {
              decodeFramePayload(payload)
              frames++
            } catch (error) {
              if (!(error instanceof FederationError)) throw error
            }
          }
        }
      } catch (error) {
        if (!(error instanceof FederationError))
          throw new Error(`case ${i}: ${(error as Error).name}: ${(error as Error).message}`)
      }
      // Never more buffered than one frame of the limit and its prefix.
      expect(decoder.pending).toBeLessThanOrEqual(MAX_FRAME_BYTES + 4 + 40)
    }
    expect(frames).toBeGreaterThan(0)
  })

  test('a length prefix of 4 GB and one of 5 bytes: refused before anything is buffered', () => {
    const decoder = new FrameDecoder()
    decoder.push(new Uint8Array([0xff, 0xff, 0xff, 0x7f]))
    expect(() => decoder.take()).toThrow(/over the limit/)
    const malformed = new FrameDecoder()
    malformed.push(new Uint8Array([0x80, 0x80, 0x80, 0x80, 0x01]))
    expect(() => malformed.take()).toThrow(/prefix is malformed/)
  })
})

describe('batch bodies', () => {
  test('heads that claim huge counts or lengths: undefined (decoded the general way), never a throw or a huge allocation', () => {
    const random = prng(1606)
    const before = process.memoryUsage().rss
    for (let i = 0; i < 20_000; i++) {
      const parts = [0xa5, 0x61, 0x61, 0x63, 0x74, 0x65, 0x6c, 0x61, 0x6e, 0x01, 0x61, 0x72]
      // An array head with a random (often absurd) count, then random record-ish bytes.
      const count = pick(random, [0x80, 0x81, 0x98, 0x9a, 0x9b])
      const tail = Array.from({ length: int(random, 64) }, () =>
        pick(random, [0x83, 0x61, 0x78, 0x41, 0x00, 0x01, 0xff, 0x7b, 0x5b, int(random, 256)]),
      )
      const bytes = new Uint8Array([
        ...parts,
        count,
        ...(count >= 0x98 ? [0xff, 0xff, 0xff, 0xff] : []),
        ...tail,
      ])
      expectOnlyNamedErrors(() => decodeBatchBody(bytes), [], `case ${i}`)
    }
    expect(process.memoryUsage().rss - before).toBeLessThan(200 * 1024 * 1024)
  })
})

describe('OCPI 2.2.1 objects', () => {
  test('random values and mutated objects through every lenient and strict schema: parsed or a zod issue', () => {
    const random = prng(1607)
    const schemas = [
      ...Object.entries(ocpi221.lenient).map(([name, schema]) => [`lenient.${name}`, schema] as const),
      ...Object.entries(ocpi221.strict).map(([name, schema]) => [`strict.${name}`, schema] as const),
    ].filter(([, schema]) => typeof (schema as { safeParse?: unknown }).safeParse === 'function')
    expect(schemas.length).toBeGreaterThan(20)
    for (let i = 0; i < 20_000; i++) {
      const [name, schema] = pick(random, schemas)
      const value = randomValue(random)
      let result: { success: boolean } | undefined
      try {
        result = (schema as { safeParse(v: unknown): { success: boolean } }).safeParse(value)
      } catch (error) {
        throw new Error(`case ${i} ${name}: ${(error as Error).name}: ${(error as Error).message}`)
      }
      expect(typeof result.success).toBe('boolean')
    }
  })
})

describe('2030.5 XML', () => {
  const document =
    '<DERControlList xmlns="urn:ieee:std:2030.5:ns" all="1" results="1" href="/derp/0/derc"><DERControl href="/derp/0/derc/1"><mRID>0A</mRID><description>x</description><DERControlBase><opModExpLimW><multiplier>0</multiplier><value>5000</value></opModExpLimW></DERControlBase></DERControl></DERControlList>'

  test('billion laughs is refused before anything expands', () => {
    const laughs = [
      '<?xml version="1.0"?>',
      '<!DOCTYPE lolz [',
      '<!ENTITY lol "lol">',
      ...Array.from(
        { length: 9 },
        (_, i) => `<!ENTITY lol${i + 1} "${`&lol${i === 0 ? '' : i};`.repeat(10)}">`,
      ),
      ']>',
      '<DERControlList xmlns="urn:ieee:std:2030.5:ns">&lol9;</DERControlList>',
    ].join('\n')
    const before = process.memoryUsage().rss
    expect(() => parseXml(laughs)).toThrow(CsipXmlError)
    expect(() => parseXml(laughs)).toThrow(/DOCTYPE and entity declarations are refused/)
    expect(process.memoryUsage().rss - before).toBeLessThan(50 * 1024 * 1024)
  })

  test('external entities (file:// and http://, SYSTEM and PUBLIC, parameter entities) are refused and nothing is read', async () => {
    const passwd = await readFile('/etc/passwd', 'utf8').catch(() => 'root:')
    const variants = [
      '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><DERControlList xmlns="urn:ieee:std:2030.5:ns"><mRID>&x;</mRID></DERControlList>',
      '<!DOCTYPE d SYSTEM "http://127.0.0.1:1/evil.dtd"><DERControlList/>',
      '<!DOCTYPE d PUBLIC "-//x//y" "file:///etc/passwd"><DERControlList/>',
      '<!DOCTYPE d [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]><DERControlList/>',
      '<!doctype d [<!entity x SYSTEM "file:///etc/passwd">]><DERControlList>&x;</DERControlList>',
      // Without a declaration, an undeclared entity is not expanded from anywhere.
      '<DERControlList xmlns="urn:ieee:std:2030.5:ns"><mRID>&x;</mRID></DERControlList>',
    ]
    for (const variant of variants) {
      let parsed: unknown
      try {
        parsed = parseXml(variant)
      } catch (error) {
        expect(error, variant).toBeInstanceOf(CsipXmlError)
        continue
      }
      expect(JSON.stringify(parsed)).not.toContain(passwd.slice(0, 20))
      expect(JSON.stringify(parsed)).not.toContain('root:')
    }
    expect(() => parseXml(variants[0]!)).toThrow(CsipXmlError)
    expect(() => parseXml(variants[4]!)).toThrow(CsipXmlError)
  })

  test('nesting 100,000 deep, 4 MB strings and many attributes: a CsipXmlError or a value, never a crash', () => {
    const deep = `${'<a>'.repeat(100_000)}x${'</a>'.repeat(100_000)}`
    expectOnlyNamedErrors(() => parseXml(deep), [CsipXmlError], 'deep')
    const long = `<DERControlList><mRID>${'A'.repeat(3 * 1024 * 1024)}</mRID></DERControlList>`
    expectOnlyNamedErrors(() => parseXml(long), [CsipXmlError], 'long')
    const over = `<DERControlList><mRID>${'A'.repeat(5 * 1024 * 1024)}</mRID></DERControlList>`
    expect(() => parseXml(over)).toThrow(/over the/)
    const attributes = `<DERControlList ${Array.from({ length: 20_000 }, (_, i) => `a${i}="${i}"`).join(' ')}/>`
    expectOnlyNamedErrors(() => parseXml(attributes), [CsipXmlError], 'attributes')
  })

  test('5,000 mutations of a DERControlList: parsed or CsipXmlError', () => {
    const random = prng(1608)
    expect(parseXml(document).root).toBe('DERControlList')
    for (let i = 0; i < 5_000; i++) {
      const input = mutateText(document, random)
      expectOnlyNamedErrors(() => parseXml(input), [CsipXmlError], `case ${i}: ${JSON.stringify(input)}`)
    }
  })
})
