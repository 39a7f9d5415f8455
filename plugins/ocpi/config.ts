/**
 * The `[plugins.ocpi]` configuration slice (ARCHITECTURE §8): where the OCPI server listens, the
 * versions URL partners use, who we are in OCPI (country code, party id, roles), and what the
 * CPO role publishes besides the node's standing data (tariffs, location and connector defaults)
 * or the eMSP role issues (driver tokens).
 */
import * as z from 'zod'
import { durationSeconds, parseDurationSeconds, parseListen } from '../config-helpers.ts'
import {
  CONNECTOR_FORMATS,
  CONNECTOR_TYPES,
  ocpi221,
  POWER_TYPES,
  TOKEN_TYPES,
  WHITELIST_TYPES,
} from './v221.ts'

export { parseDurationSeconds, parseListen }

/** Loopback by default: expose OCPI through a TLS-terminating proxy (`public_url`). */
export const DEFAULT_LISTEN = '127.0.0.1:8082'

const duration = (what: string, min: number, max: number) => durationSeconds(what, min, max, '30 or "5m"')

const strict = ocpi221.strict

/** Location fields for stations whose standing data does not carry them. */
export const locationDefaultsSchema = z.strictObject({
  name: z.string().max(255).optional(),
  address: z.string().min(1).max(45),
  city: z.string().min(1).max(45),
  postal_code: z.string().max(10).optional(),
  state: z.string().max(20).optional(),
  /** ISO 3166-1 alpha-3. */
  country: z.string().regex(/^[A-Z]{3}$/, 'an ISO 3166-1 alpha-3 code like "NLD"'),
  latitude: strict.geoLocation.shape.latitude,
  longitude: strict.geoLocation.shape.longitude,
  time_zone: z.string().min(1).max(255),
  parking_type: z.string().max(32).optional(),
})

/** Connector data for EVSEs whose standing data does not carry it. */
export const connectorDefaultsSchema = z.strictObject({
  standard: z.enum(CONNECTOR_TYPES).default('IEC_62196_T2'),
  format: z.enum(CONNECTOR_FORMATS).default('SOCKET'),
  power_type: z.enum(POWER_TYPES).default('AC_3_PHASE'),
  max_voltage: z.number().int().positive().default(230),
  max_amperage: z.number().int().positive().default(32),
})

/** A tariff of ours as configured: the Tariff object without owner and `last_updated`. */
const tariffConfigSchema = strict.tariff.omit({ country_code: true, party_id: true, last_updated: true })

/** A driver token the eMSP role issues (pushed to CPOs, answered on real-time authorization). */
export const driverTokenSchema = z.strictObject({
  type: z.enum(TOKEN_TYPES).default('RFID'),
  contract_id: z.string().min(1).max(36),
  visual_number: z.string().max(64).optional(),
  issuer: z.string().min(1).max(64).optional(),
  group_id: z.string().max(36).optional(),
  valid: z.boolean().default(true),
  whitelist: z.enum(WHITELIST_TYPES).default('ALLOWED'),
  language: z.string().length(2).optional(),
})

const TOKEN_UID = /^[\x21-\x7e]{1,36}$/

export const ocpiConfigSchema = z
  .strictObject({
    listen: z
      .string()
      .default(DEFAULT_LISTEN)
      .refine((value) => parseListen(value) !== undefined, 'must be "HOST:PORT" (e.g. "127.0.0.1:8082")'),
    /** The versions URL partners use; its other URLs are derived from it. */
    public_url: z
      .url({ protocol: /^https?$/ })
      .refine((value) => /\/versions\/?$/.test(new URL(value).pathname), 'must end with /versions')
      .optional(),
    country_code: z.string().regex(/^[A-Z]{2}$/, 'an ISO 3166-1 alpha-2 code like "NL"'),
    party_id: z.string().regex(/^[A-Z0-9]{3}$/, 'three letters or digits like "OEN"'),
    roles: z
      .array(z.enum(['cpo', 'emsp']))
      .min(1)
      .default(['cpo'])
      .transform((roles) => [...new Set(roles)]),
    /** Our BusinessDetails in the credentials exchange. */
    business_name: z.string().min(1).max(100).default('oe-node'),
    website: z.url().max(255).optional(),
    max_body_bytes: z
      .number()
      .int()
      .min(4096)
      .max(64 * 1024 * 1024)
      .default(1024 * 1024),
    /** Objects per page we serve (X-Limit) and ask for when pulling. */
    page_limit: z.number().int().min(1).max(10_000).default(100),
    /** How often the eMSP role pulls from its CPOs (0: only on registration and on demand). */
    pull_interval: duration('pull_interval', 0, 7 * 86_400).default(3600),
    /** Requests to partners. */
    call_timeout: duration('call_timeout', 1, 300).default(30),
    /** How long a command (START_SESSION, …) may take at the station before it is a TIMEOUT. */
    command_timeout: duration('command_timeout', 5, 600).default(60),
    /** CPO: how often active sessions' energy is pushed (PATCH). */
    session_update_interval: duration('session_update_interval', 1, 86_400).default(300),
    currency: z
      .string()
      .regex(/^[A-Z]{3}$/)
      .default('EUR'),
    /** CPO: its tariffs (Tariff objects without country_code, party_id, last_updated). */
    tariffs: z.array(tariffConfigSchema).default([]),
    /** CPO: the tariff every connector refers to (default: the first of `tariffs`). */
    tariff_id: z.string().max(36).optional(),
    location: locationDefaultsSchema.optional(),
    connector: connectorDefaultsSchema.default(connectorDefaultsSchema.parse({})),
    /** CPO: what a station is told about a token no eMSP pushed and none authorises in real time. */
    unknown_tokens: z.enum(['reject', 'accept']).default('reject'),
    /** eMSP: driver tokens by uid. */
    tokens: z
      .record(z.string().regex(TOKEN_UID, 'a token uid is 1-36 printable characters'), driverTokenSchema)
      .default({}),
  })
  .superRefine((config, context) => {
    const ids = config.tariffs.map((tariff) => tariff.id)
    if (new Set(ids).size !== ids.length)
      context.addIssue({ code: 'custom', path: ['tariffs'], message: 'tariff ids must be unique' })
    if (config.tariff_id !== undefined && !ids.includes(config.tariff_id))
      context.addIssue({ code: 'custom', path: ['tariff_id'], message: 'names no tariff in `tariffs`' })
  })

export type OcpiConfig = z.output<typeof ocpiConfigSchema>
export type DriverTokenConfig = z.output<typeof driverTokenSchema>
export type LocationDefaults = z.output<typeof locationDefaultsSchema>
export type ConnectorDefaults = z.output<typeof connectorDefaultsSchema>

/** The versions URL partners use: `public_url`, else the listener's own. */
export function versionsUrl(config: OcpiConfig, bound?: { host: string; port: number }): string {
  if (config.public_url) return config.public_url.replace(/\/$/, '')
  const { host, port } = bound ?? parseListen(config.listen)!
  const shown = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host
  return `http://${shown.includes(':') ? `[${shown}]` : shown}:${port}/ocpi/versions`
}
