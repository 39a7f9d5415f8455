import { createHash } from 'node:crypto'
import * as ed from '@noble/ed25519'
import { describe, expect, it, test } from 'vitest'
import { prng, thrown } from '../test/helpers/check.ts'
import {
  type AgreementBody,
  type AgreementDocument,
  agreementId,
  base64url,
  encodeBody,
  parseAgreementBody,
  type Signer,
  signId,
  signTermination,
} from './agreement.ts'
import { encodeCanonical } from './canonical-cbor.ts'
import { decodeFramePayload, encodeFrame, encodeVarint, FrameDecoder, MAX_FRAME_BYTES } from './frames.ts'
import { messageAgreementId, parseAgreementMessage, parseReply } from './messages.ts'

// @noble/ed25519 needs a synchronous SHA-512 (agreement.ts sets it too; tests must not rely on import order).
ed.hashes.sha512 = (message: Uint8Array) => new Uint8Array(createHash('sha512').update(message).digest())

const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString('hex')
const unhex = (text: string): Uint8Array => new Uint8Array(Buffer.from(text, 'hex'))

/** Fixed keys, nonce and times, so every run signs (ed25519 is deterministic) the same bytes. */
function fixedSigner(fill: number): Signer & { key: string } {
  const seed = new Uint8Array(32).fill(fill)
  const publicKey = ed.getPublicKey(seed)
  return { publicKey, key: base64url(publicKey), sign: (message) => ed.sign(message, seed) }
}

const provider = fixedSigner(1)
const consumer = fixedSigner(2)
const stranger = fixedSigner(3)

const body: AgreementBody = parseAgreementBody({
  v: 1,
  provider: { org: 'Acme Charging', key: provider.key },
  consumer: { org: 'GridCo', key: consumer.key },
  purpose: 'Smart charging pilot',
  created: 1_893_456_000_000,
  validFrom: 1_893_456_000_000,
  validUntil: 1_896_048_000_000,
  nonce: '0123456789abcdef0123456789abcdef',
  grants: [
    { data: 'telemetry', kinds: ['evse'], quantities: ['power', 'energy_import'], minIntervalMs: 60_000 },
    {
      data: 'control',
      kinds: ['evse'],
      commands: ['limit_power'],
      bounds: { limit_power: { min: 0, max: 1.5e4 } },
    },
  ],
  limits: { maxRecordsPerSec: 100 },
  onwardSharing: false,
})
const id = agreementId(body)
const bodyHex = hex(encodeBody(body))
const doc: AgreementDocument = {
  body,
  signatures: { provider: signId(id, provider), consumer: signId(id, consumer) },
}
const AT = 1_893_500_000_000
const propose = { t: 'propose', doc }
const proposeOne = { t: 'propose', doc: { body, signatures: { provider: doc.signatures.provider } } }
const accept = { t: 'accept', id, sig: doc.signatures.consumer }
const rejection = signTermination('reject', id, 'not this quarter', consumer, AT)
const revocation = signTermination('revoke', id, 'pilot ended', provider, AT)
const reject = { t: 'reject', rejection }
const revoke = { t: 'revoke', revocation }

/** Push a byte string in the given chunks and collect every complete payload. */
function frames(chunks: Uint8Array[], decoder = new FrameDecoder()): Uint8Array[] {
  const out: Uint8Array[] = []
  for (const chunk of chunks) {
    decoder.push(chunk)
    for (let payload = decoder.take(); payload !== undefined; payload = decoder.take()) out.push(payload)
  }
  return out
}

function concat(...parts: Uint8Array[]): Uint8Array {
  return new Uint8Array(Buffer.concat(parts))
}

describe('encodeVarint', () => {
  it.each([
    [0, '00'],
    [1, '01'],
    [127, '7f'],
    [128, '8001'],
    [300, 'ac02'],
    [16_383, 'ff7f'],
    [16_384, '808001'],
    [MAX_FRAME_BYTES, '808004'],
  ])('encodes %d as %s', (value, expected) => {
    expect(hex(encodeVarint(value))).toBe(expected)
  })
})

describe('encodeFrame and FrameDecoder', () => {
  const messages = [propose, accept, reject, revoke, { ok: true }, {}, [], 'x'.repeat(300), null]

  it.each(messages.map((message) => [JSON.stringify(message).slice(0, 40), message]))(
    'round-trip %s',
    (_, message) => {
      const frame = encodeFrame(message)
      const payloads = frames([frame])
      expect(payloads).toHaveLength(1)
      expect(hex(payloads[0]!)).toBe(hex(encodeCanonical(message)))
      expect(decodeFramePayload(payloads[0]!)).toEqual(message)
    },
  )

  it('takes a large frame sent a byte at a time, holding a few dozen pieces at most', () => {
    const body = Uint8Array.from({ length: 300_000 }, (_, i) => (i * 7) % 251)
    const frame = encodeFrame({ t: 'batch', body }, 1 << 20)
    const next = encodeFrame({ ok: true })
    const decoder = new FrameDecoder(1 << 20)
    let most = 0
    for (let i = 0; i < frame.length; i++) {
      decoder.push(frame.subarray(i, i + 1))
      most = Math.max(most, decoder.pieces)
      if (i < frame.length - 1 && i % 997 === 0) expect(decoder.take()).toBeUndefined()
    }
    decoder.push(next)
    expect(most).toBeLessThan(64)
    const payload = decoder.take()!
    expect(hex(payload)).toBe(hex(encodeCanonical({ t: 'batch', body })))
    expect(decodeFramePayload(decoder.take()!)).toEqual({ ok: true })
    expect(decoder.pending).toBe(0)
  })

  it('prefixes the payload with its length as a varint', () => {
    const frame = encodeFrame('x'.repeat(300))
    const payload = encodeCanonical('x'.repeat(300))
    expect(hex(frame)).toBe(hex(encodeVarint(payload.length)) + hex(payload))
  })

  it('reassembles a frame split at every byte boundary, and nothing before its last byte', () => {
    const frame = encodeFrame(propose)
    expect(frame.length).toBeGreaterThan(128) // a two-byte length prefix, split too
    for (let cut = 0; cut <= frame.length; cut++) {
      const decoder = new FrameDecoder()
      decoder.push(frame.subarray(0, cut))
      if (cut < frame.length) expect(decoder.take()).toBeUndefined()
      decoder.push(frame.subarray(cut))
      const payload = decoder.take()
      expect(payload && hex(payload)).toBe(hex(frame.subarray(2)))
      expect(decoder.take()).toBeUndefined()
      expect(decoder.pending).toBe(0)
    }
  })

  it('reassembles frames pushed one byte at a time', () => {
    const stream = concat(encodeFrame(accept), encodeFrame(propose), encodeFrame(revoke))
    const payloads = frames([...stream].map((byte) => new Uint8Array([byte])))
    expect(payloads.map((payload) => decodeFramePayload(payload))).toEqual([accept, propose, revoke])
  })

  it('takes several frames from one chunk, and keeps the start of the next', () => {
    const next = encodeFrame(reject)
    const stream = concat(encodeFrame(accept), encodeFrame({}), encodeFrame(revoke), next.subarray(0, 5))
    const decoder = new FrameDecoder()
    const payloads = frames([stream], decoder)
    expect(payloads.map((payload) => decodeFramePayload(payload))).toEqual([accept, {}, revoke])
    expect(decoder.pending).toBe(5)
    expect(frames([next.subarray(5)], decoder).map((payload) => decodeFramePayload(payload))).toEqual([
      reject,
    ])
  })

  it('takes an empty payload (length 0) as a frame of its own', () => {
    const payloads = frames([unhex('00' + '01f6')])
    expect(payloads.map(hex)).toEqual(['', 'f6'])
  })

  it('accepts a payload of exactly MAX_FRAME_BYTES', () => {
    const payload = new Uint8Array(MAX_FRAME_BYTES).fill(0x61)
    const payloads = frames([concat(encodeVarint(MAX_FRAME_BYTES), payload)])
    expect(payloads).toHaveLength(1)
    expect(payloads[0]!.length).toBe(MAX_FRAME_BYTES)
  })

  it('refuses to encode a message over MAX_FRAME_BYTES with FrameError', () => {
    expect(thrown(() => encodeFrame({ big: 'x'.repeat(MAX_FRAME_BYTES) })).name).toBe('FrameError')
  })

  it.each([
    ['MAX_FRAME_BYTES + 1', encodeVarint(MAX_FRAME_BYTES + 1)],
    ['2^21', encodeVarint(2 ** 21)],
    ['the largest 4-byte varint', unhex('ffffff7f')],
  ])('throws FrameError on a declared length of %s before the payload arrives', (_, prefix) => {
    const decoder = new FrameDecoder()
    decoder.push(prefix)
    expect(thrown(() => decoder.take()).name).toBe('FrameError')
  })

  it('honours a smaller limit given to the decoder', () => {
    const decoder = new FrameDecoder(10)
    decoder.push(concat(encodeVarint(10), new Uint8Array(10)))
    expect(decoder.take()?.length).toBe(10)
    decoder.push(encodeVarint(11))
    expect(thrown(() => decoder.take()).name).toBe('FrameError')
  })

  it('throws FrameError on a 5-byte length prefix', () => {
    const decoder = new FrameDecoder()
    decoder.push(unhex('8080808000'))
    expect(thrown(() => decoder.take()).name).toBe('FrameError')
    const split = new FrameDecoder()
    split.push(unhex('80808080'))
    expect(split.take()).toBeUndefined()
    split.push(unhex('01'))
    expect(thrown(() => split.take()).name).toBe('FrameError')
  })

  it.each([
    ['an empty payload', ''],
    ['a truncated array', '82'],
    ['a stray break byte', 'ff'],
    ['a reserved head', '1c'],
    ['trailing bytes', 'f6f6'],
    ['a cut-off string', '6461'],
    ['an integer over 2^53', '1b0020000000000000'],
    ['an indefinite map without end', 'bf6161'],
    ['ASCII text', hex(Buffer.from('hello, world'))],
  ])('decodeFramePayload refuses %s with FrameError', (_, bytes) => {
    expect(thrown(() => decodeFramePayload(unhex(bytes))).name).toBe('FrameError')
  })

  it('decodeFramePayload refuses deep nesting with FrameError, not a stack overflow', () => {
    const bytes = new Uint8Array(MAX_FRAME_BYTES).fill(0x81)
    bytes[MAX_FRAME_BYTES - 1] = 0
    expect(thrown(() => decodeFramePayload(bytes)).name).toBe('FrameError')
  })
})

describe('parseAgreementMessage', () => {
  it('parses a proposal signed by both parties, through a frame, and recomputes its id', () => {
    const [payload] = frames([encodeFrame(propose)])
    const { message, id: parsedId } = parseAgreementMessage(decodeFramePayload(payload!))
    expect(parsedId).toBe(id)
    expect(message).toEqual(propose)
    expect(messageAgreementId(message, parsedId)).toBe(id)
  })

  it('parses a proposal signed by one party', () => {
    const parsed = parseAgreementMessage(decodeFramePayload(encodeFrame(proposeOne).subarray(2)))
    expect(parsed.id).toBe(id)
    expect(parsed.message).toEqual(proposeOne)
  })

  it.each([
    ['accept', accept],
    ['reject', reject],
    ['revoke', revoke],
  ])('parses %s, through a frame', (_, value) => {
    const [payload] = frames([encodeFrame(value)])
    const { message, id: parsedId } = parseAgreementMessage(decodeFramePayload(payload!))
    expect(message).toEqual(value)
    expect(parsedId).toBe(id)
    expect(messageAgreementId(message)).toBe(id)
  })

  it.each([
    ['an unknown t', { t: 'offer', doc }],
    ['t in another case', { ...accept, t: 'Accept' }],
    ['a numeric t', { t: 1 }],
    ['no t', { id, sig: 'x' }],
    ['an inherited name as t', { t: 'constructor' }],
  ])('refuses %s with AgreementFormatError at t', (_, value) => {
    const error = thrown(() => parseAgreementMessage(value))
    expect(error.name).toBe('AgreementFormatError')
    expect(error.path).toBe('t')
  })

  it.each([null, undefined, 42, 'propose', [], [propose], new Uint8Array([1])])(
    'refuses %j as a message with AgreementFormatError',
    (value) => {
      expect(thrown(() => parseAgreementMessage(value)).name).toBe('AgreementFormatError')
    },
  )

  it.each([
    ['propose', { ...propose, id }, 'id'],
    ['accept', { ...accept, by: consumer.key }, 'by'],
    ['reject', { ...reject, reason: 'x' }, 'reason'],
    ['revoke', { ...revoke, id }, 'id'],
    ['a termination', { t: 'revoke', revocation: { ...revocation, note: 'x' } }, 'revoke.note'],
  ])('refuses an extra field on %s with AgreementFormatError', (_, value, path) => {
    const error = thrown(() => parseAgreementMessage(value))
    expect(error.name).toBe('AgreementFormatError')
    expect(error.path).toBe(path)
  })

  it.each([
    ['a short accept id', { ...accept, id: id.slice(1) }, 'id'],
    ['an uppercase accept id', { ...accept, id: id.toUpperCase() }, 'id'],
    ['an accept id as bytes', { ...accept, id: Buffer.from(id, 'hex') }, 'id'],
    ['a missing accept id', { t: 'accept', sig: accept.sig }, 'id'],
    ['an accept signature that is not text', { ...accept, sig: 5 }, 'sig'],
    ['an accept signature over 128 characters', { ...accept, sig: 'A'.repeat(129) }, 'sig'],
    [
      'a rejection id that is not hex',
      { t: 'reject', rejection: { ...rejection, id: 'z'.repeat(64) } },
      'reject.id',
    ],
    [
      'a revocation id with a prefix',
      { t: 'revoke', revocation: { ...revocation, id: `0x${id}` } },
      'revoke.id',
    ],
    ['a missing rejection', { t: 'reject' }, 'reject'],
    ['a proposal without a body', { t: 'propose', doc: { signatures: doc.signatures } }, 'body'],
  ])('refuses %s with AgreementFormatError', (_, value, path) => {
    const error = thrown(() => parseAgreementMessage(value))
    expect(error.name).toBe('AgreementFormatError')
    expect(error.path).toBe(path)
  })

  it.each([
    ['a revocation with an altered reason', { t: 'revoke', revocation: { ...revocation, reason: 'breach' } }],
    ['a revocation with an altered time', { t: 'revoke', revocation: { ...revocation, at: AT + 1 } }],
    [
      'a revocation naming the other party in by',
      { t: 'revoke', revocation: { ...revocation, by: consumer.key } },
    ],
    [
      'a revocation signed by a third key that names a party',
      { t: 'revoke', revocation: { ...signTermination('revoke', id, 'x', stranger, AT), by: provider.key } },
    ],
    ['a rejection replayed as a revocation', { t: 'revoke', revocation: rejection }],
    ['a revocation replayed as a rejection', { t: 'reject', rejection: revocation }],
    [
      'a rejection moved to another agreement',
      { t: 'reject', rejection: { ...rejection, id: 'e'.repeat(64) } },
    ],
    ['a proposal without signatures', { t: 'propose', doc: { body, signatures: {} } }],
    [
      'a proposal with its signatures swapped',
      {
        t: 'propose',
        doc: { body, signatures: { provider: doc.signatures.consumer, consumer: doc.signatures.provider } },
      },
    ],
    [
      'a proposal with a changed body',
      { t: 'propose', doc: { ...doc, body: { ...body, purpose: 'Resale' } } },
    ],
  ])('refuses %s with BadSignatureError', (_, value) => {
    expect(thrown(() => parseAgreementMessage(value)).name).toBe('BadSignatureError')
  })

  // Regression: Object.prototype names as grant data once let any peer make the receiver throw a
  // TypeError (not a FederationError) with one proposal.
  test('refuses a proposal whose grant data is "constructor" with AgreementFormatError', () => {
    const value = {
      t: 'propose',
      doc: { body: { ...body, grants: [{ data: 'constructor', kinds: ['evse'] }] } },
    }
    const [payload] = frames([encodeFrame(value)])
    expect(thrown(() => parseAgreementMessage(decodeFramePayload(payload!))).name).toBe(
      'AgreementFormatError',
    )
  })
})

describe('parseReply', () => {
  it('reads {ok: true} and {ok: false, error, message}, cutting long texts', () => {
    expect(parseReply({ ok: true })).toEqual({ ok: true })
    expect(parseReply({ ok: false, error: 'BadSignatureError', message: 'no' })).toEqual({
      ok: false,
      error: 'BadSignatureError',
      message: 'no',
    })
    const long = parseReply({ ok: false, error: 'E'.repeat(100), message: 'm'.repeat(5000) })
    expect(long).toEqual({ ok: false, error: 'E'.repeat(64), message: 'm'.repeat(1000) })
  })

  it.each([null, {}, { ok: 'true' }, { ok: false }, { ok: false, error: 1, message: 'x' }])(
    'refuses %j with AgreementFormatError',
    (value) => {
      expect(thrown(() => parseReply(value)).name).toBe('AgreementFormatError')
    },
  )
})

describe('fuzz: FrameDecoder → decodeFramePayload → parseAgreementMessage', () => {
  const ALLOWED = [
    'FrameError',
    'AgreementFormatError',
    'BadSignatureError',
    'DecodeError',
    'FederationError',
  ]
  const bases = [propose, proposeOne, accept, reject, revoke].map((message) => ({
    message,
    frame: encodeFrame(message),
  }))

  type Outcome = { parsed: ReturnType<typeof parseAgreementMessage>[] } | { error: Error }

  /** Feed bytes in random chunks; a stream stops at its first error, as the node resets it. */
  function run(bytes: Uint8Array, random: () => number): Outcome {
    const decoder = new FrameDecoder()
    const parsed: ReturnType<typeof parseAgreementMessage>[] = []
    let offset = 0
    let steps = 0
    try {
      while (offset < bytes.length) {
        const size = 1 + Math.floor(random() * (bytes.length - offset))
        decoder.push(bytes.subarray(offset, offset + size))
        offset += size
        for (let payload = decoder.take(); payload !== undefined; payload = decoder.take()) {
          // Every payload consumes at least its prefix byte: more payloads than bytes is a loop.
          if (++steps > bytes.length) throw new Error('FrameDecoder returned more frames than bytes')
          parsed.push(parseAgreementMessage(decodeFramePayload(payload)))
        }
      }
    } catch (error) {
      return { error: error as Error }
    }
    return { parsed }
  }

  it('never throws anything but a named federation error, and no mutation forges a document', () => {
    const random = prng(0x5eed)
    const names = new Map<string, number>()
    const unexpected: string[] = []
    const forged: string[] = []
    let parsedMutations = 0
    const ITERATIONS = 10_000

    for (let i = 0; i < ITERATIONS; i++) {
      let bytes: Uint8Array
      let base: (typeof bases)[number] | undefined
      const kind = i % 10
      if (kind < 2) {
        // Random bytes as a stream.
        bytes = new Uint8Array(Math.floor(random() * 200)).map(() => Math.floor(random() * 256))
      } else if (kind < 4) {
        // A well-framed random payload, so the bytes reach the CBOR decoder.
        const payload = new Uint8Array(Math.floor(random() * 150)).map(() => Math.floor(random() * 256))
        bytes = concat(encodeVarint(payload.length), payload)
      } else {
        // One byte of a valid message replaced, or one bit flipped.
        base = bases[i % bases.length]!
        bytes = base.frame.slice()
        const at = Math.floor(random() * bytes.length)
        bytes[at] = random() < 0.5 ? Math.floor(random() * 256) : bytes[at]! ^ (1 << Math.floor(random() * 8))
      }

      const outcome = run(bytes, random)
      if ('error' in outcome) {
        const name = outcome.error instanceof Error ? outcome.error.name : typeof outcome.error
        names.set(name, (names.get(name) ?? 0) + 1)
        if (!ALLOWED.includes(name))
          unexpected.push(`${name}: ${outcome.error.message} (input ${hex(bytes)})`)
        continue
      }
      if (!base) continue
      for (const { message, id: parsedId } of outcome.parsed) {
        parsedMutations++
        // What still verifies must be what was signed: the same body bytes, hence the same id.
        if (message.t === 'propose') {
          if (hex(encodeBody(message.doc.body)) !== bodyHex || parsedId !== id) forged.push(hex(bytes))
        } else if (message.t === 'reject' || message.t === 'revoke') {
          const termination = message.t === 'reject' ? message.rejection : message.revocation
          const original = message.t === 'reject' ? rejection : revocation
          const { sig: _a, ...signedFields } = termination
          const { sig: _b, ...originalFields } = original
          if (base.message.t !== message.t || JSON.stringify(signedFields) !== JSON.stringify(originalFields))
            forged.push(hex(bytes))
        }
      }
    }

    expect(unexpected.slice(0, 5)).toEqual([])
    expect(forged.slice(0, 5)).toEqual([])
    // The fuzz reached every stage: frames, CBOR, shape and signatures all refused something.
    for (const name of ['FrameError', 'AgreementFormatError', 'BadSignatureError']) {
      expect(names.get(name) ?? 0).toBeGreaterThan(0)
    }
    expect(parsedMutations).toBeGreaterThan(0)
  }, 60_000)
})
