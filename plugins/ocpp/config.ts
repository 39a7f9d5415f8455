/**
 * The `[plugins.ocpp]` configuration slice (ARCHITECTURE §8): where the CSMS listens, TLS for
 * Security Profile 2, client certificates for Security Profile 3 and the CA that signs stations'
 * certificates, which stations may connect with which password, and timings.
 */
import * as z from 'zod'

/** Default listener: every interface (chargers sit on the site network), port 9220. */
export const DEFAULT_LISTEN = '0.0.0.0:9220'
/** Largest WebSocket message a station may send; bigger frames close the connection (1009). */
export const DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024

/**
 * A station identity, as it appears in `ws://host/ocpp/<id>`: it becomes the `station` resource
 * id and the prefix of its `evse` ids (`<id>-<n>`), so it follows §5 with room for the suffix.
 */
export const STATION_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_:-]{0,119}$/

/** `"300"`, `300`, `"300s"`, `"5m"`, `"1h"`, `"1500ms"` → seconds. */
export function parseDurationSeconds(input: string | number): number | undefined {
  if (typeof input === 'number') return Number.isFinite(input) ? input : undefined
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(input)
  if (!match) return undefined
  const value = Number(match[1])
  const unit = match[2] ?? 's'
  return unit === 'ms' ? value / 1000 : unit === 'm' ? value * 60 : unit === 'h' ? value * 3600 : value
}

const duration = (what: string, min: number, max: number) =>
  z.union([z.number(), z.string()]).transform((input, context) => {
    const seconds = parseDurationSeconds(input)
    if (seconds === undefined || seconds < min || seconds > max) {
      context.addIssue({
        code: 'custom',
        message: `${what} must be a duration between ${min} s and ${max} s (e.g. 300 or "5m")`,
      })
      return z.NEVER
    }
    return seconds
  })

/** `HOST:PORT` or `[IPv6]:PORT`. */
export function parseListen(listen: string): { host: string; port: number } | undefined {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]\s]+)):(\d{1,5})$/.exec(listen)
  if (!match) return undefined
  const port = Number(match[3])
  if (port > 65_535) return undefined
  return { host: match[1] ?? match[2]!, port }
}

export const stationConfigSchema = z.strictObject({
  /** Security Profile 1/2: HTTP Basic password of this station (username = its identity). */
  password: z.string().min(1, 'must not be empty').max(256),
})

export const ocppConfigSchema = z
  .strictObject({
    listen: z
      .string()
      .default(DEFAULT_LISTEN)
      .refine((value) => parseListen(value) !== undefined, 'must be "HOST:PORT" (e.g. "0.0.0.0:9220")'),
    /** PEM certificate (chain) and key: with both, the endpoint is wss:// (Security Profile 2). */
    tls_cert: z.string().min(1).optional(),
    tls_key: z.string().min(1).optional(),
    /**
     * PEM CA certificate(s) that issue stations' client certificates: with it the listener asks
     * stations for a certificate (Security Profile 3). A trusted certificate whose CN is the
     * station id admits the station without a password; one that is untrusted or names another
     * station is refused. Stations without a certificate may still use their password.
     */
    tls_ca: z.string().min(1).optional(),
    /** The operator CA (PEM certificate and key) that signs 2.0.1 stations' CSRs (SignCertificate). */
    signing_ca_cert: z.string().min(1).optional(),
    signing_ca_key: z.string().min(1).optional(),
    /** Validity of the station certificates signed with `signing_ca_cert`, in days. */
    signed_cert_days: z.number().int().min(1).max(3650).default(365),
    /** Accept stations that are not configured, without credentials (labs only). */
    auto_accept: z.boolean().default(false),
    /** Heartbeat interval sent in BootNotification; silence for twice this marks a station offline. */
    heartbeat_interval: duration('heartbeat_interval', 1, 86_400).default(300),
    /** How long a call to a station (SetChargingProfile, Reset, …) may take. */
    call_timeout: duration('call_timeout', 1, 300).default(30),
    max_message_bytes: z
      .number()
      .int()
      .min(1024)
      .max(16 * 1024 * 1024)
      .default(DEFAULT_MAX_MESSAGE_BYTES),
    stations: z
      .record(
        z.string().regex(STATION_ID_PATTERN, 'a station id is letters, digits, _ : - (at most 120)'),
        stationConfigSchema,
      )
      .default({}),
  })
  .superRefine((config, context) => {
    if ((config.tls_cert === undefined) !== (config.tls_key === undefined)) {
      context.addIssue({
        code: 'custom',
        path: [config.tls_cert === undefined ? 'tls_cert' : 'tls_key'],
        message: 'tls_cert and tls_key go together',
      })
    }
    if (config.tls_ca !== undefined && config.tls_cert === undefined) {
      context.addIssue({
        code: 'custom',
        path: ['tls_ca'],
        message: 'client certificates need TLS: set tls_cert and tls_key too',
      })
    }
    if ((config.signing_ca_cert === undefined) !== (config.signing_ca_key === undefined)) {
      context.addIssue({
        code: 'custom',
        path: [config.signing_ca_cert === undefined ? 'signing_ca_cert' : 'signing_ca_key'],
        message: 'signing_ca_cert and signing_ca_key go together',
      })
    }
  })

export type OcppConfig = z.output<typeof ocppConfigSchema>
