import { createServer } from 'node:net'
import { describe, expect, test } from 'vitest'
import { freePort, isVersionAtLeast } from './nats-server.ts'
import { STREAMS, streamForSubject } from './streams.ts'
import { isValidSubjectFilter, parseTelemetrySubject, subjects } from './subjects.ts'

const KINDS = ['site', 'meter', 'der', 'inverter', 'battery', 'pv', 'station', 'evse', 'load'] as const

describe('subject builders', () => {
  test('build the subjects of ARCHITECTURE §5', () => {
    expect(subjects.telemetry('meter', 'm1', 'power_l1')).toBe('oe.tel.meter.m1.power_l1')
    expect(subjects.event('station', 'st1', 'session_start')).toBe('oe.evt.station.st1.session_start')
    expect(subjects.control('evse', 'st1-2', 'limit_power')).toBe('oe.ctl.evse.st1-2.limit_power')
    expect(subjects.standing('battery', 'b1')).toBe('oe.std.battery.b1')
    expect(subjects.peer('acme', 'tel.meter.m1.power')).toBe('oe.peer.acme.tel.meter.m1.power')
    expect(subjects.send('acme', 'evse', 'st1-2', 'limit_power')).toBe(
      'oe.send.acme.ctl.evse.st1-2.limit_power',
    )
  })

  test('build the KV key of a resource', () => {
    expect(subjects.resourceKey('meter', 'm1')).toBe('meter.m1')
  })

  test('build subjects that land in the stream for their area', () => {
    expect(streamForSubject(subjects.telemetry('meter', 'm1', 'power'))).toBe('OE_TEL')
    expect(streamForSubject(subjects.event('meter', 'm1', 'fault'))).toBe('OE_EVT')
    expect(streamForSubject(subjects.control('battery', 'b1', 'limit_power'))).toBe('OE_CTL')
    expect(streamForSubject(subjects.standing('meter', 'm1'))).toBe('OE_STD')
    expect(streamForSubject(subjects.peer('acme', 'tel.meter.m1.power'))).toBe('OE_PEER')
    expect(streamForSubject(subjects.send('acme', 'battery', 'b1', 'limit_power'))).toBe('OE_OUT')
  })

  test('build subjects that are valid NATS subjects', () => {
    for (const subject of [
      subjects.telemetry('station', 'st:1', 'energy_import'),
      subjects.event('evse', 'st1-2', 'status'),
      subjects.send('peer_1', 'evse', 'st1-2', 'limit_power'),
    ]) {
      expect(isValidSubjectFilter(subject)).toBe(true)
    }
  })
})

describe('parseTelemetrySubject', () => {
  test.each(KINDS)('round trips a %s subject', (kind) => {
    for (const [rid, q] of [
      ['m1', 'power'],
      ['Station_7:evse-2', 'energy_import_l3'],
      ['x'.repeat(128), 'soc'],
      ['0', 'temperature'],
    ] as const) {
      expect(parseTelemetrySubject(subjects.telemetry(kind, rid, q))).toStrictEqual({ kind, rid, q })
    }
  })

  test.each([
    '',
    'oe',
    'oe.tel',
    'oe.tel.meter.m1',
    'oe.tel.meter.m1.power.extra',
    'oe.evt.meter.m1.power',
    'oe.std.meter.m1.power',
    'xx.tel.meter.m1.power',
    'OE.tel.meter.m1.power',
    'oe.peer.meter.m1.power',
    'oe.tel.meters.m1.power',
    'oe.tel.*.m1.power',
    'oe.tel.meter.*.power',
    'oe.tel.meter.m1.>',
    'oe.tel.meter..power',
    'oe.tel.meter.-m1.power',
    `oe.tel.meter.${'x'.repeat(129)}.power`,
    'oe.tel.meter.m1.watts',
    'oe.tel.meter.m1.soc_l1',
    'oe.tel.meter.m1.temperature_l2',
    'oe.tel.meter.m1.',
  ])('rejects %j with a ValidationError on subject', (subject) => {
    let caught: unknown
    try {
      parseTelemetrySubject(subject)
    } catch (error) {
      caught = error
    }
    expect((caught as Error | undefined)?.name).toBe('ValidationError')
    expect((caught as { path?: string }).path).toBe('subject')
  })
})

describe('isValidSubjectFilter', () => {
  test.each([
    'oe.tel.>',
    '*',
    '>',
    'oe.>',
    'oe.tel.*.m1.power',
    'oe.*.meter.*.>',
    'oe.tel.meter.m1.power',
    'oe.peer.acme.tel.>',
    '$JS.API.INFO',
    'a'.repeat(512),
  ])('accepts %s', (subject) => {
    expect(isValidSubjectFilter(subject)).toBe(true)
  })

  test.each([
    '',
    'oe.>.x',
    '>.oe',
    'oe.>.>',
    'oe..tel',
    '.oe',
    'oe.',
    '..',
    'oe.tel.m*',
    'oe.tel.*m',
    'oe.tel.a>b',
    'oe.tel.>>',
    'oe tel',
    'oe.tel\t',
    'oe.tel\n',
    'oe.tél',
    'a'.repeat(513),
  ])('rejects %j', (subject) => {
    expect(isValidSubjectFilter(subject)).toBe(false)
  })
})

describe('streamForSubject', () => {
  test.each(Object.entries(STREAMS))('maps the filter of %s to itself', (name, filter) => {
    expect(streamForSubject(filter)).toBe(name)
  })

  test.each([
    ['oe.tel.meter.m1.power', 'OE_TEL'],
    ['oe.tel.*.*.power', 'OE_TEL'],
    ['oe.evt.station.st1.fault', 'OE_EVT'],
    ['oe.ctl.>', 'OE_CTL'],
    ['oe.std.meter.m1', 'OE_STD'],
    ['oe.peer.acme.tel.meter.m1.power', 'OE_PEER'],
    ['oe.peer.acme.evt.>', 'OE_PEER'],
    ['oe.send.acme.ctl.evse.st1-2.limit_power', 'OE_OUT'],
  ])('maps %s to %s', (subject, stream) => {
    expect(streamForSubject(subject)).toBe(stream)
  })

  test.each([
    '',
    'oe',
    'oe.>',
    'oe.*.meter.m1.power',
    'oe.kv.x',
    'oe.out.x',
    'xx.tel.meter.m1.power',
    'tel.oe.x',
  ])('maps %j to no stream', (subject) => {
    expect(streamForSubject(subject)).toBeUndefined()
  })
})

describe('isVersionAtLeast', () => {
  test.each([
    ['2.10.0', true],
    ['2.10.27', true],
    ['v2.10.27', true],
    ['nats-server: v2.11.4', true],
    ['2.11.0-beta.1', true],
    ['3.0.0', true],
    ['10.0.0', true],
    ['2.9.10', false],
    ['2.9.99', false],
    ['2.1.0', false],
    ['1.20.0', false],
    ['v1.99.99', false],
    ['', false],
    ['unknown', false],
    ['2.10', false],
  ])('%j is at least 2.10: %s', (version, expected) => {
    expect(isVersionAtLeast(version)).toBe(expected)
  })

  test('honours a different minimum', () => {
    expect(isVersionAtLeast('2.10.5', [2, 11])).toBe(false)
    expect(isVersionAtLeast('2.11.0', [2, 11])).toBe(true)
    expect(isVersionAtLeast('2.12.0', [3, 0])).toBe(false)
  })
})

describe('freePort', () => {
  test('returns a port that can be listened on', async () => {
    const port = await freePort()
    expect(Number.isInteger(port)).toBe(true)
    expect(port).toBeGreaterThan(0)
    expect(port).toBeLessThan(65536)
    const server = createServer()
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(port, '127.0.0.1', resolve)
    })
    await new Promise<void>((resolve) => server.close(() => resolve()))
  })
})
