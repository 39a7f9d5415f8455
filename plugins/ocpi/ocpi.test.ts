import { describe, expect, test } from 'vitest'
import { runPluginCompliance } from '../compliance.ts'
import { ocpiConfigSchema, versionsUrl } from './config.ts'
import { ocpiPlugin } from './index.ts'
import { partnerIdFor } from './ocpi.ts'

runPluginCompliance(ocpiPlugin, {
  validConfig: { listen: '127.0.0.1:0', country_code: 'NL', party_id: 'OEN', roles: ['cpo', 'emsp'] },
  invalidConfig: { country_code: 'Netherlands' },
})

describe('config', () => {
  const parse = (slice: Record<string, unknown>) => ocpiConfigSchema.safeParse(slice)

  test('defaults', () => {
    const config = parse({ country_code: 'NL', party_id: 'OEN' }).data!
    expect(config).toMatchObject({
      listen: '127.0.0.1:8082',
      roles: ['cpo'],
      page_limit: 100,
      call_timeout: 30,
      command_timeout: 60,
      pull_interval: 3600,
      tariffs: [],
      tokens: {},
      connector: { standard: 'IEC_62196_T2', power_type: 'AC_3_PHASE', max_voltage: 230, max_amperage: 32 },
    })
    expect(versionsUrl(config)).toBe('http://127.0.0.1:8082/ocpi/versions')
  })

  test('public_url ends with /versions; codes, roles, tariffs and tokens are checked', () => {
    const base = { country_code: 'NL', party_id: 'OEN' }
    expect(versionsUrl(parse({ ...base, public_url: 'https://ocpi.example.com/ocpi/versions' }).data!)).toBe(
      'https://ocpi.example.com/ocpi/versions',
    )
    expect(parse({ ...base, public_url: 'https://ocpi.example.com/ocpi' }).success).toBe(false)
    expect(parse({ ...base, party_id: 'TOOLONG' }).success).toBe(false)
    expect(parse({ ...base, roles: ['hub'] }).success).toBe(false)
    expect(parse({ ...base, roles: ['emsp', 'cpo'] }).data?.roles).toEqual(['emsp', 'cpo'])
    expect(parse({ ...base, tariff_id: 'T9' }).success).toBe(false)
    expect(
      parse({
        ...base,
        tariffs: [
          {
            id: 'T1',
            currency: 'EUR',
            elements: [{ price_components: [{ type: 'ENERGY', price: 0.3, step_size: 1 }] }],
          },
        ],
      }).success,
    ).toBe(true)
    expect(parse({ ...base, tariffs: [{ id: 'T1', currency: 'EUR', elements: [] }] }).success).toBe(false)
    expect(parse({ ...base, tokens: { 'bad token': { contract_id: 'X' } } }).success).toBe(false)
    expect(parse({ ...base, tokens: { T1: { contract_id: 'NL-OEN-1' } } }).data?.tokens.T1).toMatchObject({
      type: 'RFID',
      whitelist: 'ALLOWED',
      valid: true,
    })
  })

  test('partner ids from names and hosts', () => {
    expect(partnerIdFor('Green MSP B.V.')).toBe('green-msp-b-v')
    expect(partnerIdFor('127.0.0.1-8082')).toBe('127-0-0-1-8082')
    expect(partnerIdFor('!!!')).toBe('partner')
  })
})
