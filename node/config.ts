/**
 * Node configuration: one schema, layered as defaults < config file (TOML) < `OE_NODE_*`
 * environment < command-line flags, and validated once. Every problem is reported with its key
 * path (and where it came from), so an operator can fix them all in one go.
 */
import { readFile } from 'node:fs/promises'
import { parse as parseToml } from 'smol-toml'
import * as z from 'zod'
import { ConfigError, type ConfigIssue } from './errors.ts'

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 }
const SIZE_UNITS: Record<string, number> = {
  B: 1,
  KB: 1e3,
  MB: 1e6,
  GB: 1e9,
  TB: 1e12,
  KiB: 1024,
  MiB: 1024 ** 2,
  GiB: 1024 ** 3,
  TiB: 1024 ** 4,
}

/** `"500ms"`, `"60s"`, `"7d"` or a number of milliseconds. */
export function parseDuration(value: string | number): number | undefined {
  if (typeof value === 'number') return Number.isFinite(value) && value >= 0 ? value : undefined
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$/.exec(value)
  if (!match) return undefined
  return Math.round(Number(match[1]) * DURATION_UNITS[match[2] ?? 'ms']!)
}

/** `"1GiB"`, `"512MB"`, `-1` (unlimited) or a number of bytes. */
export function parseSize(value: string | number): number | undefined {
  if (typeof value === 'number') return Number.isSafeInteger(value) && value >= -1 ? value : undefined
  if (value.trim() === '-1') return -1
  const match = /^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$/.exec(value)
  if (!match) return undefined
  return Math.round(Number(match[1]) * SIZE_UNITS[match[2] ?? 'B']!)
}

const duration = z.union([z.string(), z.number()]).transform((value, ctx) => {
  const parsed = parseDuration(value)
  if (parsed === undefined) {
    ctx.addIssue({ code: 'custom', message: `'${value}' is not a duration (e.g. "500ms", "60s", "7d")` })
    return z.NEVER
  }
  return parsed
})

const size = z.union([z.string(), z.number()]).transform((value, ctx) => {
  const parsed = parseSize(value)
  if (parsed === undefined) {
    ctx.addIssue({
      code: 'custom',
      message: `'${value}' is not a size (e.g. "512MiB", "1GB", -1 for unlimited)`,
    })
    return z.NEVER
  }
  return parsed
})

const hostPort = z
  .string()
  .regex(/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/, 'must be HOST:PORT (e.g. 127.0.0.1:7410)')
  .refine((value) => !(Number(value.slice(value.lastIndexOf(':') + 1)) > 65535), 'port must be at most 65535')

const multiaddr = z
  .string()
  .regex(/^(\/[A-Za-z0-9.:_-]+)+$/, 'must be a multiaddr (e.g. /ip4/0.0.0.0/tcp/7400)')

const port = z.coerce
  .number({ error: 'must be a port number (0-65535)' })
  .int('must be a port number (0-65535)')
  .min(0, 'must be a port number (0-65535)')
  .max(65535, 'must be a port number (0-65535)')

const streamLimits = (maxAge: string, maxBytes: string) =>
  z.strictObject({ max_age: duration.prefault(maxAge), max_bytes: size.prefault(maxBytes) }).prefault({})

export const configSchema = z.strictObject({
  org: z.string().trim().min(1, 'must not be empty').max(128).optional(),
  api: z
    .strictObject({
      listen: hostPort.default('127.0.0.1:7410'),
      max_body_bytes: size.prefault('16MiB').refine((value) => value > 0, 'must be positive'),
      ingest_tokens: z.array(z.string().min(16, 'an ingest token needs at least 16 characters')).default([]),
      // Records per ingest request; a body holding more is refused (413) before it is parsed.
      max_records: z.coerce
        .number({ error: 'must be a number of records (1-10000000)' })
        .int('must be a whole number of records')
        .min(1, 'must be at least 1 record')
        .max(10_000_000, 'must be at most 10000000 records')
        .default(100_000),
      // Host names (besides loopback, IP literals and api.listen's host) under which health and
      // metrics are open without a token: a DNS name for this host that local tools use.
      allowed_hosts: z
        .array(
          z
            .string()
            .regex(/^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$/, 'must be a host name (no scheme, port or spaces)')
            .transform((name) => name.toLowerCase().replace(/\.$/, '')),
        )
        .default([]),
    })
    .prefault({}),
  federation: z
    .strictObject({
      listen: z.array(multiaddr).min(1).default(['/ip4/0.0.0.0/tcp/7400']),
      // A provider's batches: up to batch_records records, or what has come within batch_wait.
      batch_records: z.coerce
        .number({ error: 'must be a number of records (1-10000)' })
        .int('must be a whole number of records')
        .min(1, 'must be at least 1 record')
        .max(10_000, 'must be at most 10000 records')
        .default(500),
      batch_wait: duration
        .prefault('5ms')
        .refine((value) => value <= 10_000, 'must be at most 10s: records wait this long at most'),
      // Batches a consumer lets a provider have in flight.
      credit: z.coerce
        .number({ error: 'must be a number of batches (1-256)' })
        .int('must be a whole number of batches')
        .min(1, 'must be at least 1 batch')
        .max(256, 'must be at most 256 batches')
        .default(8),
      // What seals Noise frames: the system's OpenSSL when it passes its self-test ("auto"),
      // OpenSSL or nothing ("openssl"), or the WebAssembly build ("wasm").
      noise_crypto: z
        .enum(['auto', 'openssl', 'wasm'], { error: 'must be "auto", "openssl" or "wasm"' })
        .default('auto'),
    })
    .prefault({}),
  nats: z
    .strictObject({
      url: z
        .string()
        .regex(/^(nats|tls|ws|wss):\/\/\S+$/, 'must be a NATS URL (nats://HOST:PORT)')
        .optional(),
      creds: z.string().min(1).optional(),
      port: port.default(0),
      server_bin: z.string().min(1).optional(),
      max_memory_store: size.prefault('256MiB'),
      max_file_store: size.prefault('10GiB'),
      // Copies of every stream and KV bucket the node creates. Unset: 1 on the embedded server,
      // 3 on an external cluster of 3 servers or more.
      replicas: z.coerce
        .number({ error: 'must be a number of replicas (1-5)' })
        .int('must be a whole number of replicas')
        .min(1, 'must be at least 1')
        .max(5, 'must be at most 5 (JetStream allows 1 to 5)')
        .optional(),
    })
    .prefault({}),
  // This process among the replicas of one organisation's node (all sharing one NATS cluster).
  node: z
    .strictObject({
      // Unset: a random id kept in <data-dir>/replica-id.
      replica_id: z
        .string()
        .regex(/^[A-Za-z0-9_-]{1,64}$/, 'must be 1-64 characters of A-Z a-z 0-9 _ -')
        .optional(),
      // Single-owner work (an agreement's outgoing transfer, …) is held through a lease this
      // long, renewed every lease_renew; another replica takes it over after lease_term.
      lease_term: duration
        .prefault('3s')
        .refine((value) => value >= 300 && value <= 60_000, 'must be between 300ms and 60s'),
      lease_renew: duration
        .prefault('1s')
        .refine((value) => value >= 50 && value <= 30_000, 'must be between 50ms and 30s'),
    })
    .prefault({})
    .refine((node) => node.lease_renew * 2 <= node.lease_term, {
      message: 'lease_renew must be at most half of lease_term',
      path: ['lease_renew'],
    }),
  streams: z
    .strictObject({
      telemetry: streamLimits('7d', '1GiB'),
      events: streamLimits('30d', '256MiB'),
      control: streamLimits('7d', '64MiB'),
      standing: streamLimits('365d', '256MiB'),
      peer: streamLimits('7d', '1GiB'),
      outbox: streamLimits('1d', '64MiB'),
    })
    .prefault({}),
  log: z
    .strictObject({
      level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
      format: z.enum(['json', 'pretty']).default('json'),
    })
    .prefault({}),
  shutdown_timeout: duration.prefault('10s'),
  plugins: z.record(z.string(), z.record(z.string(), z.unknown())).default({}),
})

export type NodeConfig = z.output<typeof configSchema>
export type ConfigInput = z.input<typeof configSchema>

/** Setting paths that environment variables and flags may set, with how to read a string. */
const SETTINGS: Record<string, 'string' | 'list' | 'number'> = {
  org: 'string',
  'api.listen': 'string',
  'api.max_body_bytes': 'string',
  'api.ingest_tokens': 'list',
  'api.max_records': 'number',
  'api.allowed_hosts': 'list',
  'federation.listen': 'list',
  'federation.batch_records': 'number',
  'federation.batch_wait': 'string',
  'federation.credit': 'number',
  'federation.noise_crypto': 'string',
  'nats.url': 'string',
  'nats.creds': 'string',
  'nats.port': 'number',
  'nats.server_bin': 'string',
  'nats.max_memory_store': 'string',
  'nats.max_file_store': 'string',
  'nats.replicas': 'number',
  'node.replica_id': 'string',
  'node.lease_term': 'string',
  'node.lease_renew': 'string',
  'log.level': 'string',
  'log.format': 'string',
  shutdown_timeout: 'string',
  ...Object.fromEntries(
    ['telemetry', 'events', 'control', 'standing', 'peer', 'outbox'].flatMap((stream) => [
      [`streams.${stream}.max_age`, 'string'],
      [`streams.${stream}.max_bytes`, 'string'],
    ]),
  ),
}

/** Environment variables that are not settings but are ours. */
const NON_SETTING_ENV = new Set(['OE_NODE_DATA_DIR'])

export const envName = (path: string): string => `OE_NODE_${path.replaceAll('.', '_').toUpperCase()}`

function setPath(target: Record<string, unknown>, path: string, value: unknown): void {
  const keys = path.split('.')
  let node = target
  for (const key of keys.slice(0, -1)) {
    const next = node[key]
    if (typeof next !== 'object' || next === null || Array.isArray(next)) node[key] = {}
    node = node[key] as Record<string, unknown>
  }
  node[keys[keys.length - 1]!] = value
}

function readSetting(kind: 'string' | 'list' | 'number', raw: string): unknown {
  if (kind === 'list')
    return raw
      .split(',')
      .map((item) => item.trim())
      .filter((item) => item !== '')
  return raw
}

export interface LoadConfigOptions {
  /** Config file; missing is fine unless `required`. */
  file?: string
  required?: boolean
  env?: Record<string, string | undefined>
  /** Flag values by setting path (`api.listen`); undefined ones are skipped. */
  flags?: Record<string, unknown>
}

/** Parse TOML text into a plain object; a syntax error is a ConfigError naming the line. */
export function parseConfigText(text: string, source: string): Record<string, unknown> {
  try {
    return parseToml(text) as Record<string, unknown>
  } catch (error) {
    const { line, column } = error as { line?: number; column?: number }
    const message = (error as Error).message.split('\n')[0] ?? 'syntax error'
    const where =
      line !== undefined ? ` at line ${line}${column !== undefined ? `, column ${column}` : ''}` : ''
    throw new ConfigError([{ path: '(file)', message: `TOML syntax error${where}: ${message}` }], source)
  }
}

export async function loadConfig(options: LoadConfigOptions = {}): Promise<NodeConfig> {
  let merged: Record<string, unknown> = {}
  const origin = new Map<string, string>()
  if (options.file) {
    let text: string | undefined
    try {
      text = await readFile(options.file, 'utf8')
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT' || options.required) {
        throw new ConfigError(
          [{ path: '(file)', message: `cannot read: ${(error as Error).message}` }],
          options.file,
        )
      }
    }
    if (text !== undefined) merged = parseConfigText(text, options.file)
  }
  const issues: ConfigIssue[] = []
  const env = options.env ?? process.env
  for (const [name, raw] of Object.entries(env)) {
    // An empty value (FOO=) counts as unset, as shells and unit files use it.
    if (!name.startsWith('OE_NODE_') || raw === undefined || raw === '' || NON_SETTING_ENV.has(name)) continue
    const path = Object.keys(SETTINGS).find((candidate) => envName(candidate) === name)
    if (path === undefined) {
      issues.push({ path: `env ${name}`, message: 'is not an oe-node setting' })
      continue
    }
    setPath(merged, path, readSetting(SETTINGS[path]!, raw))
    origin.set(path, `env ${name}`)
  }
  for (const [path, value] of Object.entries(options.flags ?? {})) {
    if (value === undefined) continue
    setPath(merged, path, value)
    origin.set(path, 'flag')
  }
  const result = configSchema.safeParse(merged)
  if (!result.success) {
    for (const issue of result.error.issues) {
      const parent = issue.path.map(String)
      const located =
        issue.code === 'unrecognized_keys'
          ? issue.keys.map((key) => ({ path: [...parent, key].join('.'), message: 'unknown key' }))
          : [{ path: parent.join('.') || '(root)', message: issue.message }]
      for (const { path, message } of located) {
        const from = [...origin].find(([key]) => path === key || path.startsWith(`${key}.`))?.[1]
        issues.push({ path: from ? `${path} (${from})` : path, message })
      }
    }
  }
  if (issues.length > 0) throw new ConfigError(issues, options.file)
  return result.data!
}

/** A TOML basic string: control characters (DEL included) escaped, which JSON leaves raw. */
export function tomlString(text: string): string {
  return JSON.stringify(text).replace(
    /[\u007f-\u009f]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  )
}

/** Check an org name as the schema will, before it is written anywhere. */
export function checkOrgName(org: string): string {
  const result = configSchema.shape.org.safeParse(org)
  if (!result.success || result.data === undefined) {
    throw new ConfigError([{ path: 'org', message: result.error?.issues[0]?.message ?? 'must not be empty' }])
  }
  return result.data
}

/** The config file `oe-node init` writes: the org and the settings most people change. */
export function initialConfigText(org: string): string {
  return `# oe-node configuration. Precedence: defaults < this file < OE_NODE_* env < flags.
org = ${tomlString(org)}

[api]
# Admin API, health and metrics. Keep it on loopback unless a proxy with TLS fronts it.
listen = "127.0.0.1:7410"
# Tokens that may POST /v1/telemetry and PUT /v1/resources (at least 16 characters each).
ingest_tokens = []

[federation]
listen = ["/ip4/0.0.0.0/tcp/7400"]

[nats]
# Leave url unset to run the embedded nats-server; set it to use an existing NATS.
# url = "nats://nats.example.internal:4222"
# creds = "/etc/oe-node/nats.creds"

[streams.telemetry]
max_age = "7d"
max_bytes = "1GiB"

[log]
level = "info"
format = "json"
`
}
