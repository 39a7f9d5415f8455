import type { JsMsg } from '@nats-io/jetstream'
import { describe, expect, it } from 'vitest'
import { decodeCbor, encodeCbor, encodeTelemetryPayload } from '../data-plane/index.ts'
import { prng } from '../test/helpers/check.ts'
import {
  type BatchBody,
  decodeBatchBody,
  encodeBatchBody,
  encodeBatchFrame,
  fastTelemetryTime,
  messageSubject,
  streamSequence,
  telemetryTime,
} from './batch-codec.ts'
import { decodeFederationCbor, encodeCanonical } from './canonical-cbor.ts'
import { FrameError } from './errors.ts'
import { encodeFrame } from './frames.ts'

const ID = 'ab'.repeat(32)

function randomBatch(random: () => number, records = Math.floor(random() * 40)): BatchBody {
  const r: [string, Uint8Array, number][] = []
  let seq = Math.floor(random() * 2 ** (random() < 0.5 ? 8 : 40))
  for (let i = 0; i < records; i++) {
    seq += 1 + Math.floor(random() * 300)
    const rid = random() < 0.05 ? `mètre-${i}` : `m${Math.floor(random() * 5000)}`
    const payload = encodeCbor({
      v: random() * 1e4 - 5e3,
      t: 1_700_000_000_000 + i,
      u: 'W',
      pad: 'x'.repeat(random() * 300),
    })
    r.push([`tel.meter.${rid}.power`, payload, seq])
  }
  return { id: ID, n: 1 + Math.floor(random() * 70_000), a: 'tel', upTo: seq + Math.floor(random() * 3), r }
}

/** Flip, drop, insert or truncate a few bytes. */
function mutate(bytes: Uint8Array, random: () => number): Uint8Array {
  const out = [...bytes]
  const edits = 1 + Math.floor(random() * 3)
  for (let e = 0; e < edits && out.length > 0; e++) {
    const at = Math.floor(random() * out.length)
    const kind = random()
    if (kind < 0.4) out[at] = Math.floor(random() * 256)
    else if (kind < 0.6) out.splice(at, 1)
    else if (kind < 0.8) out.splice(at, 0, Math.floor(random() * 256))
    else out.length = at
  }
  return Uint8Array.from(out)
}

/** What the general decoder makes of it: the value, or 'throws'. */
function generalDecode(bytes: Uint8Array): unknown {
  try {
    return decodeFederationCbor(bytes)
  } catch {
    return 'throws'
  }
}

describe('encodeBatchBody', () => {
  it('writes the same bytes as the canonical encoder', () => {
    const random = prng(11)
    for (let i = 0; i < 300; i++) {
      const body = randomBatch(random)
      expect(Buffer.from(encodeBatchBody(body)).equals(Buffer.from(encodeCanonical(body)))).toBe(true)
    }
  })

  it('writes every integer width the same way (0, 23, 24, 255, 256, 65535, 65536, 2^32, 2^53−1)', () => {
    for (const value of [
      0,
      23,
      24,
      255,
      256,
      65_535,
      65_536,
      2 ** 32 - 1,
      2 ** 32,
      Number.MAX_SAFE_INTEGER,
    ]) {
      const body: BatchBody = {
        id: ID,
        n: value,
        a: 'evt',
        upTo: value,
        r: [['evt.x.y.z', new Uint8Array(value % 300), value]],
      }
      expect(Buffer.from(encodeBatchBody(body)).equals(Buffer.from(encodeCanonical(body)))).toBe(true)
    }
  })

  it('refuses sequence numbers that are not whole numbers ≥ 0', () => {
    expect(() => encodeBatchBody({ id: ID, n: 1, a: 'tel', upTo: 1.5, r: [] })).toThrow(/upTo/)
    expect(() => encodeBatchBody({ id: ID, n: -1, a: 'tel', upTo: 1, r: [] })).toThrow(/n must/)
  })
})

describe('decodeBatchBody', () => {
  it('decodes what the provider writes exactly as the general decoder does', () => {
    const random = prng(12)
    for (let i = 0; i < 300; i++) {
      const bytes = encodeBatchBody(randomBatch(random))
      const fast = decodeBatchBody(bytes)
      const general = generalDecode(bytes)
      // Non-ASCII subjects take the general path; everything else the fast one.
      if (fast === undefined)
        expect([...JSON.stringify(general)].some((c) => c.charCodeAt(0) > 0x7f)).toBe(true)
      else expect(fast).toEqual(general)
    }
  })

  it('fuzz: on damaged bodies it either agrees with the general decoder or steps aside', () => {
    const random = prng(13)
    let fastHits = 0
    for (let i = 0; i < 5_000; i++) {
      const bytes = mutate(encodeBatchBody(randomBatch(random, 1 + Math.floor(random() * 6))), random)
      const fast = decodeBatchBody(bytes)
      if (fast === undefined) continue
      fastHits += 1
      expect(fast).toEqual(generalDecode(bytes))
    }
    // Some damage (inside a payload, say) keeps the shape: those must have been compared.
    expect(fastHits).toBeGreaterThan(100)
  })

  it('fuzz: random bytes never throw', () => {
    const random = prng(14)
    for (let i = 0; i < 5_000; i++) {
      const bytes = Uint8Array.from({ length: Math.floor(random() * 64) }, () => Math.floor(random() * 256))
      expect(() => decodeBatchBody(bytes)).not.toThrow()
    }
  })

  it('steps aside for other shapes: keys out of order, extra keys, a record that is not a triple', () => {
    expect(decodeBatchBody(encodeCbor({ id: ID, n: 1, a: 'tel', upTo: 1, r: [] }))).toBeUndefined()
    expect(decodeBatchBody(encodeCanonical({ id: ID, n: 1, a: 'tel', upTo: 1, r: [], x: 1 }))).toBeUndefined()
    expect(
      decodeBatchBody(encodeCanonical({ id: ID, n: 1, a: 'tel', upTo: 1, r: [['tel.a', 1]] })),
    ).toBeUndefined()
    expect(decodeBatchBody(new Uint8Array([0xa5]))).toBeUndefined()
    // A record count the body cannot hold is not believed (no huge allocation).
    expect(
      decodeBatchBody(
        Uint8Array.of(
          0xa5,
          0x61,
          0x61,
          0x63,
          0x74,
          0x65,
          0x6c,
          0x61,
          0x6e,
          0x01,
          0x61,
          0x72,
          0x9a,
          0xff,
          0xff,
          0xff,
          0xff,
        ),
      ),
    ).toBeUndefined()
  })
})

describe('telemetryTime', () => {
  /** The general answer: `t` of the decoded map when it is a number. */
  const general = (bytes: Uint8Array): number | undefined => {
    try {
      const value = decodeCbor(bytes) as { t?: unknown } | null
      if (typeof value !== 'object' || value === null || value instanceof Uint8Array) return undefined
      return typeof value.t === 'number' ? value.t : undefined
    } catch {
      return undefined
    }
  }

  it('reads t from the payloads the node writes, integer or not', () => {
    const random = prng(21)
    for (let i = 0; i < 500; i++) {
      const t = random() < 0.8 ? 1_700_000_000_000 + Math.floor(random() * 1e9) : random() * 1e12
      const payload = encodeCbor({ v: random() * 100, t, u: 'W', ql: random() < 0.5 ? 'good' : undefined })
      expect(telemetryTime(payload)).toBe(t)
    }
  })

  it('takes the fast path for what ingest and plugins write (epoch ms as float64, integers, fractions)', () => {
    const now = Date.now()
    for (const record of [
      { kind: 'meter', rid: 'M1', q: 'power', v: 1500.25, t: now, u: 'W', ql: 'good' },
      { kind: 'meter', rid: 'M1', q: 'power', v: -3, t: 1_000 },
      { kind: 'meter', rid: 'M1', q: 'power', v: 0, t: now + 0.5 },
    ] as const) {
      expect(fastTelemetryTime(encodeTelemetryPayload(record))).toBe(record.t)
    }
    expect(
      fastTelemetryTime(encodeCbor({ v: 1, t: now, u: 'W', ql: 'good', s: 12.5, pad: 'x'.repeat(60) })),
    ).toBe(now)
  })

  it('answers undefined for payloads without a numeric t, and for things that are not maps', () => {
    for (const value of [
      null,
      5,
      'text',
      [1, 2],
      new Uint8Array(3),
      { v: 1 },
      { t: 'soon' },
      { t: null },
      { t: [1] },
    ]) {
      expect(telemetryTime(encodeCbor(value))).toBeUndefined()
    }
    expect(telemetryTime(new Uint8Array())).toBeUndefined()
    expect(telemetryTime(Uint8Array.of(0xa1, 0x61))).toBeUndefined()
  })

  it('fuzz: agrees with the general decoder on damaged and random payloads', () => {
    const random = prng(22)
    for (let i = 0; i < 20_000; i++) {
      const base = encodeCbor({
        v: random() * 1e4,
        t: random() < 0.9 ? 1_700_000_000_000 + i : -i,
        u: 'W',
        ql: 'estimated',
        extra: random() < 0.3 ? { nested: [1, 'two', new Uint8Array(2), true, null, 1.5] } : undefined,
      })
      const bytes =
        random() < 0.9
          ? mutate(base, random)
          : Uint8Array.from({ length: Math.floor(random() * 40) }, () => Math.floor(random() * 256))
      expect(telemetryTime(bytes)).toBe(general(bytes))
    }
  })

  it('agrees on integer encodings of every width, and on a repeated t', () => {
    // {t: 5} with t's value written in 1, 2, 3, 5 and 9 bytes; cbor-x reads them all as 5.
    const widths = [
      [0x05],
      [0x18, 0x05],
      [0x19, 0x00, 0x05],
      [0x1a, 0, 0, 0, 5],
      [0x1b, 0, 0, 0, 0, 0, 0, 0, 5],
    ]
    for (const width of widths) {
      const bytes = Uint8Array.of(0xa1, 0x61, 0x74, ...width)
      expect(telemetryTime(bytes)).toBe(general(bytes))
    }
    const twice = Uint8Array.of(0xa2, 0x61, 0x74, 0x01, 0x61, 0x74, 0x02)
    expect(telemetryTime(twice)).toBe(general(twice))
  })
})

describe('streamSequence', () => {
  const fake = (reply: string, seq: number) => ({ msg: { reply }, seq }) as unknown as JsMsg

  it('reads the stream sequence from either form of the delivery subject', () => {
    expect(streamSequence(fake('$JS.ACK.OE_TEL.oe-agr-1.1.4711.12.1700000000000000000.0', -1))).toBe(4711)
    expect(
      streamSequence(fake('$JS.ACK.hub.ACCHASH.OE_TEL.oe-agr-1.1.4712.12.1700000000000000000.0.rnd', -1)),
    ).toBe(4712)
  })

  it("reads a real nats.js JsMsg without asking nats.js (the installed version keeps the core message as 'msg')", async () => {
    // Not exported by the package: a path import, to hold the fast path to this nats.js version.
    const { toJsMsg } = (await import('../node_modules/@nats-io/jetstream/lib/jsmsg.js')) as {
      toJsMsg: (msg: unknown) => JsMsg
    }
    const core = {
      subject: 'oe.tel.meter.M1.power',
      reply: '$JS.ACK.OE_TEL.oe-agr-x-tel.1.4713.9.1700000000000000000.12',
      data: new Uint8Array(),
      sid: 1,
    }
    const msg = toJsMsg(core)
    expect(msg.seq).toBe(4713)
    Object.defineProperty(msg, 'seq', {
      get() {
        throw new Error('streamSequence fell back to nats.js')
      },
    })
    expect(streamSequence(msg)).toBe(4713)
  })

  it("reads the sequence from the reply's bytes in nats.js's core message, never decoding the reply", () => {
    const bytes = (reply: string) => new TextEncoder().encode(reply)
    const core = (reply: string) =>
      ({
        msg: {
          _msg: { reply: bytes(reply) },
          get reply(): string {
            throw new Error('the reply was decoded')
          },
        },
        get seq(): number {
          throw new Error('streamSequence fell back to nats.js')
        },
      }) as unknown as JsMsg
    expect(streamSequence(core('$JS.ACK.OE_TEL.oe-agr-1.1.4711.12.1700000000000000000.0'))).toBe(4711)
    expect(
      streamSequence(core('$JS.ACK.hub.ACCHASH.OE_TEL.oe-agr-1.1.4712.12.1700000000000000000.0.rnd')),
    ).toBe(4712)
    // Not a delivery subject, a token that is not a number, too few tokens: the string path, then nats.js.
    const odd = (reply: string, seq: number) =>
      ({ msg: { _msg: { reply: bytes(reply) }, reply }, seq }) as unknown as JsMsg
    expect(streamSequence(odd('_INBOX.x.y.z.a.b.c.d.e', 5))).toBe(5)
    expect(streamSequence(odd('$JS.ACK.OE_TEL.c.1.x12.12.17.0', 6))).toBe(6)
    expect(streamSequence(odd('$JS.ACK.OE_TEL.c.1.0.12.17.0', 7))).toBe(7)
    expect(streamSequence(odd('$JS.ACK.a.b.c', 8))).toBe(8)
  })

  it('agrees with the string path on random delivery subjects', () => {
    const random = prng(41)
    for (let i = 0; i < 2_000; i++) {
      const tokens = Array.from({ length: 3 + Math.floor(random() * 10) }, () =>
        random() < 0.7 ? String(Math.floor(random() * 1e6)) : random() < 0.5 ? 'x' : '',
      )
      const reply = `$JS.ACK.${tokens.join('.')}`
      const viaString = streamSequence(fake(reply, -1))
      const viaBytes = streamSequence({
        msg: { _msg: { reply: new TextEncoder().encode(reply) }, reply },
        seq: -1,
      } as unknown as JsMsg)
      expect(viaBytes).toBe(viaString)
    }
  })

  it('asks nats.js for anything else', () => {
    expect(streamSequence(fake('_INBOX.x', 99))).toBe(99)
    expect(streamSequence(fake('$JS.ACK.a.b.c', 98))).toBe(98)
    expect(streamSequence({ seq: 97 } as unknown as JsMsg)).toBe(97)
  })
})

describe('messageSubject', () => {
  const withBytes = (subject: string) =>
    ({
      msg: { _msg: { subject: new TextEncoder().encode(subject) } },
      get subject(): string {
        throw new Error('messageSubject asked nats.js')
      },
    }) as unknown as JsMsg

  it('reads the subject from its bytes and hands back the same string for the same subject', () => {
    const first = messageSubject(withBytes('oe.tel.meter.m1.power'))
    expect(first).toBe('oe.tel.meter.m1.power')
    expect(messageSubject(withBytes('oe.tel.meter.m1.power'))).toBe(first)
    expect(messageSubject(withBytes('oe.tel.meter.m2.power'))).toBe('oe.tel.meter.m2.power')
  })

  it('stays right when many subjects share the cache', () => {
    for (let round = 0; round < 2; round++)
      for (let i = 0; i < 20_000; i++)
        expect(messageSubject(withBytes(`oe.tel.meter.m${i}.power`))).toBe(`oe.tel.meter.m${i}.power`)
  })

  it('asks nats.js for a subject that is not ASCII, or when the bytes are not there', () => {
    const utf8 = {
      msg: { _msg: { subject: new TextEncoder().encode('oe.tel.meter.mètre.power') } },
      subject: 'ask',
    }
    expect(messageSubject(utf8 as unknown as JsMsg)).toBe('ask')
    expect(messageSubject({ subject: 'plain' } as unknown as JsMsg)).toBe('plain')
  })
})

describe('encodeBatchFrame', () => {
  it('writes the same frame as encodeFrame over the canonical body and its signature', () => {
    const random = prng(31)
    for (let i = 0; i < 200; i++) {
      // Sizes on both sides of each varint and byte-string length boundary.
      const batch = randomBatch(random, [0, 1, 3, 40, 200, 700][i % 6])
      const sig = Uint8Array.from({ length: 64 }, () => Math.floor(random() * 256))
      const { frame, bodyBytes } = encodeBatchFrame(batch, () => sig, 4 * 1024 * 1024)
      const body = encodeCanonical(batch)
      expect(bodyBytes).toBe(body.length)
      expect(
        Buffer.from(frame).equals(Buffer.from(encodeFrame({ t: 'batch', body, sig }, 4 * 1024 * 1024))),
      ).toBe(true)
    }
  })

  it('signs exactly the body bytes, and refuses frames over the limit', () => {
    const batch = randomBatch(prng(32), 10)
    let signed: Uint8Array | undefined
    encodeBatchFrame(
      batch,
      (body) => {
        signed = Uint8Array.from(body)
        return new Uint8Array(64)
      },
      1 << 20,
    )
    expect(Buffer.from(signed!).equals(Buffer.from(encodeCanonical(batch)))).toBe(true)
    expect(() => encodeBatchFrame(batch, () => new Uint8Array(64), 100)).toThrow(FrameError)
    expect(() => encodeBatchFrame(batch, () => new Uint8Array(10), 1 << 20)).toThrow(/64 bytes/)
  })
})
