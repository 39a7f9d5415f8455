import { describe, expect, test } from 'vitest'
import { runPluginCompliance } from '../compliance.ts'
import { reservationNumber } from './commands.ts'
import { parseDurationSeconds, parseListen } from './config.ts'
import { parseEvseId } from './csms.ts'
import { ocppPlugin } from './index.ts'
import { keyToken } from './state.ts'
import { ocpp16 } from './v16.ts'
import { ocpp201 } from './v201.ts'
import { strictValidators } from './validators.ts'

runPluginCompliance(ocppPlugin, {
  validConfig: {
    listen: '127.0.0.1:0',
    heartbeat_interval: '30s',
    stations: { CS1: { password: 'secret' } },
  },
  invalidConfig: { listen: 'nowhere' },
})

describe('config', () => {
  const parse = (slice: Record<string, unknown>) => ocppPlugin.configSchema.safeParse(slice)

  test('defaults', () => {
    expect(parse({}).data).toEqual({
      listen: '0.0.0.0:9220',
      auto_accept: false,
      heartbeat_interval: 300,
      call_timeout: 30,
      max_message_bytes: 65_536,
      signed_cert_days: 365,
      stations: {},
    })
  })

  test('listen, durations, TLS pairs and station ids are checked', () => {
    expect(parseListen('[::]:9220')).toEqual({ host: '::', port: 9220 })
    expect(parseListen('localhost:70000')).toBeUndefined()
    expect(parseDurationSeconds('5m')).toBe(300)
    expect(parseDurationSeconds('1500ms')).toBe(1.5)
    expect(parse({ heartbeat_interval: 0 }).success).toBe(false)
    expect(parse({ tls_cert: '/x.pem' }).error?.issues[0]?.path).toEqual(['tls_key'])
    expect(parse({ tls_ca: '/ca.pem' }).error?.issues[0]?.path).toEqual(['tls_ca'])
    expect(parse({ signing_ca_key: '/ca.key' }).error?.issues[0]?.path).toEqual(['signing_ca_cert'])
    expect(parse({ stations: { 'bad.id': { password: 'x' } } }).success).toBe(false)
    expect(parse({ stations: { CS1: {} } }).success).toBe(false)
    expect(parse({ stations: { CS1: { password: 'x', extra: 1 } } }).success).toBe(false)
  })
})

describe('codecs build calls that the official schemas accept', () => {
  const validate = (version: string, method: string, params: unknown) =>
    strictValidators.find((v) => v.subprotocol === version)!.validate(`urn:${method}.req`, params)
  const now = Date.parse('2025-06-01T12:00:00Z')

  test.each([
    [0, undefined],
    [2, now + 900_000],
  ])('SetChargingProfile for EVSE %d until %s', (evse, until) => {
    const call16 = ocpp16.setPowerLimit({ evse, watts: 7400.04, until }, now)
    expect(validate('ocpp1.6', call16.method, call16.params)).toBe(true)
    expect(call16.params).toMatchObject({
      connectorId: evse,
      csChargingProfiles: {
        chargingProfilePurpose: evse === 0 ? 'ChargePointMaxProfile' : 'TxDefaultProfile',
        chargingSchedule: {
          chargingRateUnit: 'W',
          chargingSchedulePeriod: [{ startPeriod: 0, limit: 7400 }],
        },
      },
    })
    const call201 = ocpp201.setPowerLimit({ evse, watts: 7400, until }, now)
    expect(validate('ocpp2.0.1', call201.method, call201.params)).toBe(true)
    expect(call201.params).toMatchObject({
      evseId: evse,
      chargingProfile: {
        chargingProfilePurpose: evse === 0 ? 'ChargingStationMaxProfile' : 'TxDefaultProfile',
      },
    })
    if (until) {
      expect(call201.params).toMatchObject({ chargingProfile: { chargingSchedule: [{ duration: 900 }] } })
    }
  })

  test('remote start/stop, reset and trigger', () => {
    for (const [version, codec] of [
      ['ocpp1.6', ocpp16],
      ['ocpp2.0.1', ocpp201],
    ] as const) {
      for (const call of [
        codec.remoteStart({ evse: 1, idTag: 'TAG', remoteStartId: 7 }),
        codec.remoteStop('42'),
        codec.reset({ hard: true }),
        codec.reset({ hard: false }),
        codec.triggerMessage({ message: 'StatusNotification', evse: 1 }),
        codec.unlockConnector({ evse: 2, connector: 1 }),
        codec.reserveNow({ id: 12, evse: 1, expires: now + 600_000, idTag: 'TAG' }),
        codec.cancelReservation(12),
      ]) {
        expect(validate(version, call.method, call.params)).toBe(true)
      }
    }
    expect(() => ocpp16.remoteStop('tx-abc')).toThrow(/integer/)
  })

  test('an action unknown to a version is NotImplemented', () => {
    expect(() => validate('ocpp1.6', 'TransactionEvent', {})).toThrow(
      expect.objectContaining({ rpcErrorCode: 'NotImplemented' }),
    )
  })
})

test('OCPI reservation ids become OCPP integers: decimal ones kept, others hashed the same way each time', () => {
  expect(reservationNumber('77')).toBe(77)
  expect(reservationNumber(77)).toBe(77)
  const hashed = reservationNumber('RES-abc')!
  expect(hashed).toBe(reservationNumber('RES-abc'))
  expect(Number.isSafeInteger(hashed) && hashed >= 0 && hashed <= 2_147_483_647).toBe(true)
  expect(reservationNumber('99999999999')).not.toBe(99_999_999_999)
  expect(reservationNumber('')).toBeUndefined()
  expect(reservationNumber(-1)).toBeUndefined()
  expect(reservationNumber({})).toBeUndefined()
})

test('KV key tokens: station and transaction ids escaped, distinct ids stay distinct', () => {
  expect(keyToken('CS1')).toBe('CS1')
  expect(keyToken('CS:1')).toBe('CS=3A1')
  expect(keyToken('tx.1 2')).toBe('tx=2E1=202')
  expect(keyToken('a=3A')).not.toBe(keyToken('a:'))
})

test('EVSE ids: <station>-<n>, the station id may contain dashes', () => {
  expect(parseEvseId('CS-north-12')).toEqual({ station: 'CS-north', evse: 12 })
  expect(parseEvseId('CS1-0')).toBeUndefined()
  expect(parseEvseId('CS1')).toBeUndefined()
})
