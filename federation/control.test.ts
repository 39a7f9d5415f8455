import { createHash, generateKeyPairSync, verify } from 'node:crypto'
import * as ed from '@noble/ed25519'
import { describe, expect, it } from 'vitest'
import { encodeCbor } from '../data-plane/index.ts'
import { thrown } from '../test/helpers/check.ts'
import {
  type AgreementDocument,
  agreementId,
  base64url,
  type Grant,
  newAgreementBody,
  type Signer,
  signId,
  signTermination,
  type Termination,
} from './agreement.ts'
import { decodeFederationCbor } from './canonical-cbor.ts'
import {
  type ControlCommand,
  checkControl,
  commandTimeProblem,
  controlBytes,
  parseControlCommand,
  parseSendSubject,
} from './control.ts'

// @noble/ed25519 needs a synchronous SHA-512 (agreement.ts sets it too; tests must not rely on import order).
ed.hashes.sha512 = (message: Uint8Array) => new Uint8Array(createHash('sha512').update(message).digest())

function makeIdentity(org: string) {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519')
  const seed = new Uint8Array(privateKey.export({ type: 'pkcs8', format: 'der' }).subarray(-32))
  const raw = new Uint8Array(publicKey.export({ type: 'spki', format: 'der' }).subarray(-32))
  const signer: Signer = { publicKey: raw, sign: (message) => ed.sign(message, seed) }
  return { party: { org, key: base64url(raw) }, signer, publicKey }
}

const provider = makeIdentity('ChargeCo')
const consumer = makeIdentity('GridCo')

const DAY = 86_400_000
/** The clock every check below runs at: inside the agreements' validity. */
const NOW = Date.UTC(2030, 0, 15)

const LIMIT_CHARGERS: Grant = {
  data: 'control',
  kinds: ['evse', 'station'],
  rids: ['CP1-1', 'CP1-2', 'CP1'],
  commands: ['limit_power', 'connect'],
  bounds: { limit_power: { min: 0, max: 22_000 } },
}

/** An agreement as both nodes hold it: signed by the parties given, maybe ended. */
function agreement(
  grants: Grant[],
  options: {
    signedBy?: ('provider' | 'consumer')[]
    validFrom?: number
    validUntil?: number
    ended?: 'revocation' | 'rejection'
  } = {},
) {
  const body = newAgreementBody({
    provider: provider.party,
    consumer: consumer.party,
    purpose: 'network constraint management',
    validFrom: options.validFrom ?? NOW - DAY,
    validUntil: options.validUntil ?? NOW + 30 * DAY,
    grants,
    now: NOW - 2 * DAY,
  })
  const id = agreementId(body)
  const signatures: AgreementDocument['signatures'] = {}
  for (const role of options.signedBy ?? ['provider', 'consumer'])
    signatures[role] = signId(id, (role === 'provider' ? provider : consumer).signer)
  const doc: AgreementDocument = { body, signatures }
  const record: { id: string; doc: AgreementDocument; revocation?: Termination; rejection?: Termination } = {
    id,
    doc,
  }
  if (options.ended === 'revocation')
    record.revocation = signTermination('revoke', id, 'ended', provider.signer, NOW - 1)
  if (options.ended === 'rejection')
    record.rejection = signTermination('reject', id, 'no', provider.signer, NOW - 1)
  return record
}

const limit = (v: unknown, extra: Record<string, unknown> = {}): Uint8Array =>
  encodeCbor({ v, u: 'W', until: NOW + 3_600_000, source: 'gridco', ...extra })

const ACTIVE = agreement([{ data: 'telemetry', kinds: ['evse'], quantities: ['power'] }, LIMIT_CHARGERS])

describe('checkControl: the agreement', () => {
  it('allows a granted command on a granted resource within its bounds, naming the grant', () => {
    expect(checkControl(ACTIVE, 'evse', 'CP1-1', 'limit_power', limit(7_400), NOW)).toEqual({
      ok: true,
      grant: LIMIT_CHARGERS,
    })
    expect(checkControl(ACTIVE, 'station', 'CP1', 'connect', encodeCbor({ v: 0 }), NOW)).toMatchObject({
      ok: true,
    })
  })

  it.each<[string, Parameters<typeof agreement>[1], number, string]>([
    ['signed by the consumer only', { signedBy: ['consumer'] }, NOW, 'the agreement is proposed'],
    ['signed by the provider only', { signedBy: ['provider'] }, NOW, 'the agreement is proposed'],
    ['revoked', { ended: 'revocation' }, NOW, 'the agreement is revoked'],
    ['rejected', { signedBy: ['consumer'], ended: 'rejection' }, NOW, 'the agreement is rejected'],
    ['past its end', { validUntil: NOW - 1 }, NOW, 'the agreement is expired'],
    ['at its very end', { validUntil: NOW }, NOW, 'the agreement is expired'],
    ['not yet begun', { validFrom: NOW + DAY }, NOW, 'the agreement is accepted'],
  ])('refuses everything under an agreement %s', (_name, options, now, reason) => {
    const record = agreement([LIMIT_CHARGERS], options)
    expect(checkControl(record, 'evse', 'CP1-1', 'limit_power', limit(7_400), now)).toEqual({
      ok: false,
      reason,
    })
  })

  it('refuses a command once the agreement expires, though it was allowed a moment before', () => {
    const record = agreement([LIMIT_CHARGERS], { validUntil: NOW + 1_000 })
    expect(
      checkControl(record, 'evse', 'CP1-1', 'limit_power', limit(1, { until: NOW + 10_000 }), NOW),
    ).toMatchObject({ ok: true })
    expect(
      checkControl(record, 'evse', 'CP1-1', 'limit_power', limit(1, { until: NOW + 10_000 }), NOW + 1_000),
    ).toEqual({
      ok: false,
      reason: 'the agreement is expired',
    })
  })
})

describe('checkControl: the grant', () => {
  it('refuses under an agreement that grants only data, even for the same resources', () => {
    const dataOnly = agreement([
      { data: 'telemetry', kinds: ['evse'], quantities: ['power'] },
      { data: 'events', kinds: ['evse'], types: ['limit_power'] },
    ])
    expect(checkControl(dataOnly, 'evse', 'CP1-1', 'limit_power', limit(7_400), NOW)).toEqual({
      ok: false,
      reason: 'no control grant for limit_power on evse CP1-1',
    })
  })

  it.each([
    ['a kind not granted', 'meter', 'CP1-1', 'limit_power'],
    ['a rid not granted', 'evse', 'CP2-1', 'limit_power'],
    ['a command not granted', 'evse', 'CP1-1', 'limit_import'],
    ['a command granted as another word', 'evse', 'CP1-1', 'limit_power_l1'],
  ])('refuses %s', (_name, kind, rid, command) => {
    expect(checkControl(ACTIVE, kind, rid, command, limit(7_400), NOW)).toEqual({
      ok: false,
      reason: `no control grant for ${command} on ${kind} ${rid}`,
    })
  })

  it('allows any resource of a granted kind when the grant lists no rids', () => {
    const anyEvse = agreement([{ data: 'control', kinds: ['evse'], commands: ['connect'] }])
    expect(checkControl(anyEvse, 'evse', 'ZZ-9', 'connect', encodeCbor({ v: 1 }), NOW)).toMatchObject({
      ok: true,
    })
    expect(checkControl(anyEvse, 'station', 'ZZ', 'connect', encodeCbor({ v: 1 }), NOW)).toMatchObject({
      ok: false,
    })
  })

  it('allows a command that one of two grants allows, under that grant', () => {
    const tight: Grant = {
      data: 'control',
      kinds: ['evse'],
      commands: ['limit_power'],
      bounds: { limit_power: { max: 7_400 } },
    }
    const wide: Grant = {
      data: 'control',
      kinds: ['evse'],
      rids: ['CP1-1'],
      commands: ['limit_power'],
      bounds: { limit_power: { max: 22_000 } },
    }
    const two = agreement([tight, wide])
    expect(checkControl(two, 'evse', 'CP9-1', 'limit_power', limit(7_000), NOW)).toEqual({
      ok: true,
      grant: tight,
    })
    expect(checkControl(two, 'evse', 'CP1-1', 'limit_power', limit(11_000), NOW)).toEqual({
      ok: true,
      grant: wide,
    })
    expect(checkControl(two, 'evse', 'CP9-1', 'limit_power', limit(11_000), NOW)).toEqual({
      ok: false,
      reason: 'v 11000 is above the bound 7400',
    })
  })
})

describe('checkControl: the payload', () => {
  it.each([
    ['empty', new Uint8Array()],
    ['a truncated map', new Uint8Array([0xa1])],
    ['a reserved token', new Uint8Array([0x1c])],
    ['a stray break', new Uint8Array([0xff])],
    ['a truncated text key', new Uint8Array([0xa1, 0x61])],
  ])('refuses a payload that is not CBOR (%s)', (_name, payload) => {
    expect(checkControl(ACTIVE, 'evse', 'CP1-1', 'connect', payload, NOW)).toEqual({
      ok: false,
      reason: 'the command payload is not CBOR',
    })
  })

  it.each<[string, unknown]>([
    ['a number', 7_400],
    ['text', 'limit to 7.4 kW'],
    ['null', null],
    ['a list', [7_400, 'W']],
    ['bytes', new Uint8Array([1, 2, 3])],
    [
      'a map with a non-text key',
      new Map<unknown, unknown>([
        ['until', NOW - 1],
        [1, 2],
      ]),
    ],
  ])('refuses a payload that is not a map (%s)', (_name, value) => {
    // `connect` has no bounds here, so only the shape of the payload can refuse it.
    expect(checkControl(ACTIVE, 'evse', 'CP1-1', 'connect', encodeCbor(value), NOW)).toEqual({
      ok: false,
      reason: 'the command payload is not a map',
    })
  })

  it('refuses a command whose until is past, and allows one until now or later, or with no until', () => {
    expect(
      checkControl(ACTIVE, 'evse', 'CP1-1', 'limit_power', limit(7_400, { until: NOW - 1 }), NOW),
    ).toEqual({
      ok: false,
      reason: 'the command has expired (until is past)',
    })
    expect(
      checkControl(ACTIVE, 'evse', 'CP1-1', 'limit_power', limit(7_400, { until: NOW }), NOW),
    ).toMatchObject({ ok: true })
    expect(checkControl(ACTIVE, 'evse', 'CP1-1', 'limit_power', encodeCbor({ v: 7_400 }), NOW)).toMatchObject(
      { ok: true },
    )
  })

  it('allows v on either bound and refuses v beyond them, naming the bound', () => {
    const check = (v: number) => checkControl(ACTIVE, 'evse', 'CP1-1', 'limit_power', limit(v), NOW)
    expect(check(0)).toMatchObject({ ok: true })
    expect(check(22_000)).toMatchObject({ ok: true })
    expect(check(21_999.5)).toMatchObject({ ok: true })
    expect(check(22_000.5)).toEqual({ ok: false, reason: 'v 22000.5 is above the bound 22000' })
    expect(check(40_000)).toEqual({ ok: false, reason: 'v 40000 is above the bound 22000' })
    expect(check(-1)).toEqual({ ok: false, reason: 'v -1 is below the bound 0' })
  })

  it.each<[string, unknown]>([
    ['missing', undefined],
    ['text', '7400'],
    ['null', null],
    ['NaN', Number.NaN],
    ['infinite', Number.POSITIVE_INFINITY],
    ['too large for a number', 2n ** 64n],
    ['a list', [7_400]],
  ])('refuses a bounded command whose v is %s', (_name, v) => {
    const payload = encodeCbor(v === undefined ? { u: 'W' } : { v, u: 'W' })
    expect(checkControl(ACTIVE, 'evse', 'CP1-1', 'limit_power', payload, NOW)).toEqual({
      ok: false,
      reason: 'limit_power needs a numeric v within its bounds',
    })
  })

  it('checks only bounds the grant sets: min alone, max alone, none', () => {
    const record = agreement([
      {
        data: 'control',
        kinds: ['site'],
        commands: ['limit_import', 'limit_export', 'connect'],
        bounds: { limit_import: { min: 1_000 }, limit_export: { max: 5_000 } },
      },
    ])
    const check = (command: string, v: unknown) =>
      checkControl(record, 'site', 's1', command, encodeCbor({ v }), NOW)
    expect(check('limit_import', 1e9)).toMatchObject({ ok: true })
    expect(check('limit_import', 999)).toEqual({ ok: false, reason: 'v 999 is below the bound 1000' })
    expect(check('limit_export', -1e9)).toMatchObject({ ok: true })
    expect(check('limit_export', 5_001)).toEqual({ ok: false, reason: 'v 5001 is above the bound 5000' })
    expect(check('connect', 'anything')).toMatchObject({ ok: true })
  })
})

describe('checkControl: grants limited to sites', () => {
  const BY_SITE: Grant = {
    data: 'control',
    kinds: ['evse'],
    sites: ['depot-north'],
    commands: ['limit_power'],
    bounds: { limit_power: { min: 0, max: 22_000 } },
  }
  const record = agreement([BY_SITE])
  const SITES: Record<string, string> = { 'evse.N1-1': 'depot-north', 'evse.S1-1': 'depot-south' }
  const siteOf = (kind: string, rid: string): string | undefined => SITES[`${kind}.${rid}`]

  it('allows a command for a resource at a granted site', () => {
    expect(checkControl(record, 'evse', 'N1-1', 'limit_power', limit(7_400), NOW, { siteOf })).toEqual({
      ok: true,
      grant: BY_SITE,
    })
  })

  it('refuses a command for a resource at another site, naming the site', () => {
    expect(checkControl(record, 'evse', 'S1-1', 'limit_power', limit(7_400), NOW, { siteOf })).toEqual({
      ok: false,
      reason: 'evse S1-1 is at site depot-south; the control grant covers only depot-north',
    })
  })

  it('refuses a command for a resource whose site is unknown', () => {
    const refused = {
      ok: false,
      reason: 'the site of evse X9-1 is not known; the control grant covers only depot-north',
    }
    expect(checkControl(record, 'evse', 'X9-1', 'limit_power', limit(7_400), NOW, { siteOf })).toEqual(
      refused,
    )
    // With no site map at all nothing at a site can be checked: refused, not let through.
    expect(checkControl(record, 'evse', 'X9-1', 'limit_power', limit(7_400), NOW)).toEqual(refused)
    expect(checkControl(record, 'evse', 'N1-1', 'limit_power', limit(7_400), NOW)).toMatchObject({
      ok: false,
    })
  })

  it('lets the consumer (ignoreSites) send a command for a site it does not know, but not for a known site outside the grant', () => {
    const consumerSide = { ignoreSites: true }
    expect(
      checkControl(record, 'evse', 'X9-1', 'limit_power', limit(7_400), NOW, consumerSide),
    ).toMatchObject({ ok: true })
    expect(
      checkControl(record, 'evse', 'S1-1', 'limit_power', limit(7_400), NOW, { ...consumerSide, siteOf }),
    ).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/depot-south/),
    })
    expect(
      checkControl(record, 'evse', 'N1-1', 'limit_power', limit(7_400), NOW, { ...consumerSide, siteOf }),
    ).toMatchObject({ ok: true })
  })

  it('checks the rest of the grant as well as the site', () => {
    expect(checkControl(record, 'evse', 'N1-1', 'limit_power', limit(40_000), NOW, { siteOf })).toEqual({
      ok: false,
      reason: 'v 40000 is above the bound 22000',
    })
    expect(checkControl(record, 'evse', 'N1-1', 'connect', limit(1), NOW, { siteOf })).toEqual({
      ok: false,
      reason: 'no control grant for connect on evse N1-1',
    })
  })

  it('allows a command for any site through another grant that is not limited to sites', () => {
    const either = agreement([
      BY_SITE,
      { data: 'control', kinds: ['evse'], rids: ['S1-1'], commands: ['limit_power'] },
    ])
    expect(checkControl(either, 'evse', 'S1-1', 'limit_power', limit(7_400), NOW, { siteOf })).toMatchObject({
      ok: true,
    })
    expect(checkControl(either, 'evse', 'S2-1', 'limit_power', limit(7_400), NOW, { siteOf })).toMatchObject({
      ok: false,
    })
  })
})

describe('parseSendSubject', () => {
  it('splits oe.send.<alias>.ctl.<kind>.<rid>.<command>', () => {
    expect(parseSendSubject('oe.send.chargeco.ctl.evse.CP1-1.limit_power')).toEqual({
      alias: 'chargeco',
      kind: 'evse',
      rid: 'CP1-1',
      command: 'limit_power',
    })
  })

  it.each([
    'oe.send.chargeco.ctl.evse.CP1-1',
    'oe.send.chargeco.ctl.evse.CP1-1.limit_power.now',
    'oe.send.chargeco.tel.evse.CP1-1.power',
    'oe.ctl.evse.CP1-1.limit_power',
    'xx.send.chargeco.ctl.evse.CP1-1.limit_power',
    'oe.send.chargeco.ctl.toaster.CP1-1.limit_power',
    'oe.send.chargeco.ctl.evse.*.limit_power',
    'oe.send.chargeco.ctl.evse.>.limit_power',
    'oe.send.chargeco.ctl.evse..limit_power',
    'oe.send.chargeco.ctl.evse.-CP1.limit_power',
    'oe.send.chargeco.ctl.evse.CP1-1.Limit_Power',
    'oe.send.chargeco.ctl.evse.CP1-1.*',
    'oe.send.chargeco.ctl.evse.CP1-1.1limit',
    '',
  ])('refuses %s', (subject) => {
    expect(parseSendSubject(subject)).toBeUndefined()
  })
})

describe('parseControlCommand', () => {
  const valid: ControlCommand = {
    id: 'a'.repeat(64),
    kind: 'evse',
    rid: 'CP1-1',
    command: 'limit_power',
    payload: limit(7_400),
    at: NOW,
  }

  it('takes a well-formed command, and only its own fields', () => {
    expect(parseControlCommand({ ...valid })).toEqual(valid)
    expect(parseControlCommand({ ...valid, extra: 'ignored', v: 99 })).toEqual(valid)
  })

  it('takes a payload of up to 16 KiB', () => {
    expect(parseControlCommand({ ...valid, payload: new Uint8Array(16 * 1024) }).payload).toHaveLength(
      16 * 1024,
    )
  })

  it.each<[string, unknown]>([
    ['nothing', undefined],
    ['null', null],
    ['text', 'limit_power'],
    ['a list', [valid.id, valid.kind]],
    ['no id', { ...valid, id: undefined }],
    ['an id that is not 64 hex', { ...valid, id: 'a'.repeat(63) }],
    ['an id in upper case', { ...valid, id: 'A'.repeat(64) }],
    ['a kind that is not text', { ...valid, kind: 7 }],
    ['a rid that is not text', { ...valid, rid: ['CP1-1'] }],
    ['a command that is not text', { ...valid, command: null }],
    ['a payload that is text', { ...valid, payload: 'oP8=' }],
    ['a payload that is a list', { ...valid, payload: [1, 2] }],
    ['a payload over 16 KiB', { ...valid, payload: new Uint8Array(16 * 1024 + 1) }],
    ['no time', { ...valid, at: undefined }],
    ['a time that is text', { ...valid, at: '2030-01-15' }],
    // The provider publishes on oe.ctl.<kind>.<rid>.<command>: each must be one valid token.
    ['an unknown kind', { ...valid, kind: 'toaster' }],
    ['a rid with a dot', { ...valid, rid: 'CP1.x' }],
    ['a wildcard rid', { ...valid, rid: '*' }],
    ['a tail wildcard rid', { ...valid, rid: '>' }],
    ['an empty rid', { ...valid, rid: '' }],
    ['a command with a dot', { ...valid, command: 'limit_power.x' }],
    ['a command in upper case', { ...valid, command: 'LIMIT' }],
  ])('refuses %s, as an AgreementFormatError', (_name, value) => {
    const error = thrown(() => parseControlCommand(value))
    expect(error.name).toBe('AgreementFormatError')
  })
})

describe('controlBytes', () => {
  const command: ControlCommand = {
    id: 'b'.repeat(64),
    kind: 'evse',
    rid: 'CP1-1',
    command: 'limit_power',
    payload: limit(7_400),
    at: NOW,
  }

  it('gives the same bytes for the same command, whatever the order of its fields', () => {
    const reordered = Object.fromEntries(Object.entries(command).reverse()) as unknown as ControlCommand
    expect(Buffer.from(controlBytes(command)).equals(Buffer.from(controlBytes(reordered)))).toBe(true)
    expect(
      Buffer.from(controlBytes(command)).equals(Buffer.from(controlBytes(structuredClone(command)))),
    ).toBe(true)
  })

  it('covers every field, and says it is a control command', () => {
    expect(decodeFederationCbor(controlBytes(command))).toEqual({
      type: 'control',
      ...command,
      payload: new Uint8Array(command.payload),
    })
    const base = Buffer.from(controlBytes(command))
    const payload = new Uint8Array(command.payload)
    payload[payload.length - 1] = (payload[payload.length - 1] ?? 0) ^ 1
    for (const changed of [
      { ...command, id: 'c'.repeat(64) },
      { ...command, kind: 'station' },
      { ...command, rid: 'CP1-2' },
      { ...command, command: 'connect' },
      { ...command, payload },
      { ...command, at: NOW + 1 },
    ]) {
      expect(base.equals(Buffer.from(controlBytes(changed)))).toBe(false)
    }
  })

  it("is what the consumer signs: the consumer's key verifies it, another key does not", () => {
    const signature = consumer.signer.sign(controlBytes(command))
    expect(verify(null, controlBytes(command), consumer.publicKey, signature)).toBe(true)
    expect(verify(null, controlBytes(command), provider.publicKey, signature)).toBe(false)
    expect(verify(null, controlBytes({ ...command, at: NOW + 1 }), consumer.publicKey, signature)).toBe(false)
  })
})

describe('commandTimeProblem', () => {
  const now = 1_800_000_000_000
  it('takes a command issued within the last ten minutes or a minute ahead', () => {
    expect(commandTimeProblem(now, now)).toBeUndefined()
    expect(commandTimeProblem(now - 10 * 60_000, now)).toBeUndefined()
    expect(commandTimeProblem(now + 60_000, now)).toBeUndefined()
  })
  it('refuses one held back longer, dated further ahead, or with no valid time', () => {
    expect(commandTimeProblem(now - 10 * 60_000 - 1, now)).toMatch(/issued 600 s ago/)
    expect(commandTimeProblem(now + 60_001, now)).toMatch(/ahead of this node's clock/)
    expect(commandTimeProblem(Number.NaN, now)).toMatch(/no valid time/)
  })
})
