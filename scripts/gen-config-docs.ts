/**
 * Generate the configuration reference in README.md from the config schemas: the node's
 * `configSchema` (node/config.ts) and each built-in plugin's `configSchema`. Key paths, types
 * and defaults come from walking the zod schemas; what each key means comes from DOCS below
 * (zod has no descriptions here). A key without a description, or a description without a key,
 * fails the run, so the table cannot drift from the schema.
 *
 * Only the text between `<!-- config-reference:begin -->` and `<!-- config-reference:end -->`
 * is rewritten.
 *
 *   bun scripts/gen-config-docs.ts          # rewrite README.md
 *   bun scripts/gen-config-docs.ts --check  # exit 1 if README.md is out of date (CI)
 */
import { readFile, writeFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import type { z } from 'zod'
import { configSchema } from '../node/index.ts'
import { csipConfigDocs } from '../plugins/ieee2030-5/index.ts'
import { builtinPlugins } from '../plugins/index.ts'

const README = join(resolve(import.meta.dir, '..'), 'README.md')
const BEGIN = '<!-- config-reference:begin -->'
const END = '<!-- config-reference:end -->'

interface KeyDoc {
  /** What the key does (Markdown). */
  meaning: string
  /** Shown instead of the derived type (for durations, sizes, addresses). */
  type?: string
  /** Shown instead of the schema default (when it is computed at run time, or unset means something). */
  default?: string
}

/**
 * Descriptions by key path. Paths use `*` for a collapsed family of same-shaped tables
 * (`streams.*.max_age`) and `<id>` for a table keyed by name (`stations.<id>.password`).
 * Plugin keys are prefixed with the plugin id.
 */
const DOCS: Record<string, KeyDoc> = {
  ...csipConfigDocs,
  org: { meaning: 'organisation name on the node card', type: 'text', default: 'host name' },
  'api.listen': { meaning: 'HTTP API, health and metrics (`--api`)', type: 'HOST:PORT' },
  'api.max_body_bytes': { meaning: 'larger request bodies get 413', type: 'size' },
  'api.ingest_tokens': {
    meaning: 'bearer tokens that may ingest (≥ 16 characters); the admin token always may',
  },
  'api.max_records': {
    meaning:
      'records one `POST /v1/telemetry` may carry (1–10000000); a body holding more is answered 413 before it is parsed',
  },
  'api.allowed_hosts': {
    meaning:
      'host names under which `/livez`, `/readyz` and `/metrics` answer loopback clients without a token, besides `localhost`, IP literals and the `api.listen` host (other names get 421: DNS rebinding)',
    type: 'list of host names',
  },
  'federation.listen': {
    meaning: 'libp2p listen addresses (`--listen`, repeatable)',
    type: 'list of multiaddrs',
  },
  'federation.batch_records': {
    meaning: 'as a provider: records per signed batch at most (1–10000)',
  },
  'federation.batch_wait': {
    meaning:
      'as a provider: how long a batch may wait for more records after its first, unless it fills. The default halves the CPU of a steady 10k records/s flow at the same p99; `0ms` sends what has arrived at once (lowest p50)',
    type: 'duration',
  },
  'federation.credit': {
    meaning:
      'as a consumer: batches a provider may have in flight before an ack (1–256); bounds memory per link',
  },
  'federation.noise_crypto': {
    meaning:
      "what seals Noise frames: `auto` uses the system's OpenSSL (`libcrypto.so.3`, through `bun:ffi`) when it passes an RFC 8439 self-test, else the WebAssembly build; `openssl` refuses to start without it; `wasm` never uses it. `oe-node status` shows which is in use",
  },
  'nats.url': {
    meaning: 'external NATS (`--nats-url`); unset runs the embedded nats-server',
    type: 'NATS URL',
  },
  'nats.creds': { meaning: 'NATS credentials file for the external NATS (`--nats-creds`)', type: 'path' },
  'nats.port': {
    meaning: 'client port of the embedded nats-server (`--nats-port`)',
    type: 'port',
    default: '`0` (a free port)',
  },
  'nats.server_bin': {
    meaning: 'nats-server executable to run',
    type: 'path',
    default: 'embedded, then `PATH`',
  },
  'nats.max_memory_store': { meaning: 'embedded JetStream memory limit', type: 'size' },
  'nats.max_file_store': { meaning: 'embedded JetStream disk limit', type: 'size' },
  'nats.replicas': {
    meaning:
      'copies JetStream keeps of every stream and KV bucket the node creates (1–5); set it on every replica of a node alike',
    type: 'number',
    default: '1 on the embedded server; on an external cluster of 3 servers or more, 3',
  },
  'node.replica_id': {
    meaning:
      "this process's id among the replicas of one node (all on one NATS cluster, sharing one node key): the owner written in the leases it holds",
    type: 'text (A-Z a-z 0-9 _ -)',
    default: 'a random id kept in `<data-dir>/replica-id`',
  },
  'node.lease_term': {
    meaning:
      "how long a replica holds single-owner work (an agreement's outgoing transfer, a plugin's polling) without renewing: another replica takes over after this (300ms–60s)",
    type: 'duration',
  },
  'node.lease_renew': {
    meaning: 'how often the owner renews its leases; at most half of `node.lease_term`',
    type: 'duration',
  },
  'streams.*.max_age': { meaning: 'retention per stream (older messages are dropped)', type: 'duration' },
  'streams.*.max_bytes': { meaning: 'size cap per stream (oldest dropped first)', type: 'size' },
  'log.level': { meaning: 'log level (`--log-level`); logs go to stderr' },
  'log.format': { meaning: '`json` for machines, `pretty` for people' },
  shutdown_timeout: {
    meaning: 'graceful stop deadline; a second signal exits at once',
    type: 'duration',
  },
  'plugins.<id>': {
    meaning: 'one table per plugin, `enabled = true` turns it on (see below)',
    type: 'table',
    default: 'none enabled',
  },

  'simulator.enabled': { meaning: 'run the simulator' },
  'simulator.sites': {
    meaning: 'number of sites `site-1` … `site-<n>`, each with a grid meter, PV, a battery and chargers',
  },
  'simulator.interval': { meaning: 'time between readings (100ms to 1h)', type: 'duration' },
  'simulator.seed': {
    meaning: 'makes the fleet and its readings repeatable',
    default: 'unset (random)',
  },
  'simulator.evses_per_site': { meaning: 'chargers (EVSEs) per site' },
  'simulator.start': {
    meaning:
      '`"now"`, or an ISO 8601 time in the past where the simulated clock starts (e.g. replay a sunny noon at night); readings carry simulated time',
    type: 'text',
  },
  'openadr-vtn.enabled': {
    meaning: 'serve OpenADR 3 as a VTN (3.1.0 and 3.0.1) to VENs and business-logic clients',
  },
  'openadr-vtn.listen': {
    meaning:
      'the VTN listener; base paths `/openadr3/3.1.0` and `/openadr3/3.0.1`, tokens at `<base>/auth/token`',
    type: 'HOST:PORT',
  },
  'openadr-vtn.clients.<id>.secret': {
    meaning: 'the OAuth2 client secret of client `<id>` (≥ 8 characters)',
  },
  'openadr-vtn.clients.<id>.role': {
    meaning: '`ven` (sees only its own and targeted objects) or `bl` (business logic: sees all)',
  },
  'openadr-vtn.token_lifetime': { meaning: 'how long a bearer token is valid', type: 'duration' },
  'openadr-vtn.max_body_bytes': { meaning: 'larger request bodies get 413', type: 'size' },
  'openadr-vtn.resource_kind': { meaning: 'the §5 kind VEN resources get on the data plane' },
  'openadr-vtn.control_program': {
    meaning: "the program the node's own control events (from `limit_power`) belong to",
  },
  'openadr-vtn.max_reports': {
    meaning: 'reports kept; the oldest are dropped beyond this (their telemetry stays on the data plane)',
  },
  'openadr-vtn.webhook_attempts': {
    meaning: 'attempts per webhook notification, with back-off 1 s, 2 s, 4 s … up to 60 s',
  },
  'openadr-vtn.webhook_timeout': { meaning: 'time per webhook attempt', type: 'duration' },
  'openadr-vtn.mqtt_listen': {
    meaning:
      "MQTT notifier binding (3.1.0): nats-server's MQTT listener on the embedded data plane; VENs log in with their client id and bearer token and may only subscribe to their own topics. With `--nats-url`, enable MQTT on that cluster instead",
    type: 'HOST:PORT',
    default: 'unset (off)',
  },
  'openadr-vtn.mqtt_tls_cert': {
    meaning: 'PEM certificate (chain) for MQTT over TLS (`mqtts://`)',
    type: 'path',
  },
  'openadr-vtn.mqtt_tls_key': { meaning: 'PEM private key for `mqtt_tls_cert`', type: 'path' },
  'openadr-ven.enabled': { meaning: "follow a utility's VTN as a VEN" },
  'openadr-ven.vtn_url': { meaning: "base URL of the VTN's API, e.g. `https://vtn.example/openadr3/3.1.0`" },
  'openadr-ven.client_id': { meaning: 'the OAuth2 client id the VTN issued' },
  'openadr-ven.client_secret': { meaning: 'the OAuth2 client secret the VTN issued' },
  'openadr-ven.ven_name': { meaning: 'the name this VEN registers under' },
  'openadr-ven.version': { meaning: 'OpenADR version the VTN speaks: `3.1.0` or `3.0.1`' },
  'openadr-ven.token_url': {
    meaning: "token endpoint; default: the VTN's `auth/server` answer (3.1.0), else `<vtn_url>/auth/token`",
  },
  'openadr-ven.poll_interval': {
    meaning:
      "how often events are polled (a VTN's Retry-After stretches it); default 10 s, or 300 s (a safety net) with `notifications`",
    type: 'duration',
  },
  'openadr-ven.notifications': {
    meaning:
      "how the VEN hears of events: `poll` only, `webhook` (a subscription on the VTN calls `webhook_url`) or `mqtt` (the VTN's MQTT notifier, 3.1.0); notified events are acted on at once",
  },
  'openadr-ven.webhook_listen': {
    meaning: 'where the webhook callback is served (needed with `notifications = "webhook"`)',
    type: 'HOST:PORT',
  },
  'openadr-ven.webhook_url': {
    meaning:
      'the callback URL the VTN is given; default `http://<webhook_listen>/openadr/notifications` (set it behind a proxy or when listening on every address)',
  },
  'openadr-ven.resources.<id>': {
    meaning:
      'VTN resource name → the node resource `<kind>.<rid>` it stands for: registered, controlled and reported',
  },
  'openadr-ven.request_timeout': { meaning: 'time per request to the VTN', type: 'duration' },
  'ocpi.enabled': { meaning: 'serve OCPI 2.2.1 (CPO and/or eMSP role)' },
  'ocpi.listen': { meaning: 'the OCPI listener (put a TLS proxy in front; partners use `public_url`)' },
  'ocpi.public_url': { meaning: 'the versions URL partners use; the other URLs are derived from it' },
  'ocpi.country_code': { meaning: 'our ISO 3166-1 alpha-2 country code, e.g. `NL`' },
  'ocpi.party_id': { meaning: 'our three-character party id, e.g. `OEN`' },
  'ocpi.roles': { meaning: '`["cpo"]`, `["emsp"]` or both' },
  'ocpi.business_name': { meaning: 'our BusinessDetails name in the credentials exchange' },
  'ocpi.website': { meaning: 'our BusinessDetails website' },
  'ocpi.max_body_bytes': { meaning: 'larger request bodies get 413' },
  'ocpi.page_limit': { meaning: 'objects per page served (X-Limit) and asked for when pulling' },
  'ocpi.pull_interval': {
    meaning: 'eMSP: how often it pulls from its CPOs (0: only on registration and on demand)',
  },
  'ocpi.call_timeout': { meaning: 'time per request to a partner' },
  'ocpi.command_timeout': {
    meaning: 'how long a command (START_SESSION, …) may take at the station before it is a TIMEOUT',
  },
  'ocpi.session_update_interval': { meaning: `CPO: how often active sessions' energy is pushed (PATCH)` },
  'ocpi.currency': { meaning: 'CPO: the currency of sessions, CDRs and tariffs (ISO 4217)' },
  'ocpi.tariffs': {
    meaning: 'CPO: its tariffs (Tariff objects without country_code, party_id, last_updated)',
  },
  'ocpi.tariff_id': {
    meaning: 'CPO: the tariff every connector refers to (default: the first of `tariffs`)',
  },
  'ocpi.location.name': { meaning: 'CPO: location name for stations whose standing data has none' },
  'ocpi.location.address': { meaning: 'CPO: street address for stations whose standing data has none' },
  'ocpi.location.city': { meaning: 'CPO: city, likewise' },
  'ocpi.location.postal_code': { meaning: 'CPO: postal code, likewise' },
  'ocpi.location.state': { meaning: 'CPO: state or province, likewise' },
  'ocpi.location.country': { meaning: 'CPO: ISO 3166-1 alpha-3 country, likewise' },
  'ocpi.location.latitude': { meaning: 'CPO: latitude, likewise' },
  'ocpi.location.longitude': { meaning: 'CPO: longitude, likewise' },
  'ocpi.location.time_zone': { meaning: 'CPO: IANA time zone, likewise' },
  'ocpi.location.parking_type': { meaning: 'CPO: OCPI parking type, likewise' },
  'ocpi.connector.standard': { meaning: 'CPO: connector standard for EVSEs whose standing data has none' },
  'ocpi.connector.format': { meaning: 'CPO: `SOCKET` or `CABLE`, likewise' },
  'ocpi.connector.power_type': { meaning: 'CPO: OCPI power type, likewise' },
  'ocpi.connector.max_voltage': { meaning: 'CPO: V, likewise' },
  'ocpi.connector.max_amperage': { meaning: 'CPO: A, likewise' },
  'ocpi.unknown_tokens': {
    meaning: 'CPO: what a station is told about a token no eMSP pushed and none authorises in real time',
  },
  'ocpi.tokens.<id>.type': { meaning: 'eMSP: token type of driver token `<id>` (its uid)' },
  'ocpi.tokens.<id>.contract_id': { meaning: 'eMSP: the contract id of the token' },
  'ocpi.tokens.<id>.visual_number': { meaning: 'eMSP: the number printed on the token' },
  'ocpi.tokens.<id>.issuer': { meaning: 'eMSP: the issuing company' },
  'ocpi.tokens.<id>.group_id': { meaning: 'eMSP: the token group' },
  'ocpi.tokens.<id>.valid': { meaning: 'eMSP: whether the token may charge' },
  'ocpi.tokens.<id>.whitelist': {
    meaning: 'eMSP: OCPI whitelist type (ALWAYS, ALLOWED, ALLOWED_OFFLINE, NEVER)',
  },
  'ocpi.tokens.<id>.language': { meaning: 'eMSP: the driver’s language (ISO 639-1)' },
  'ocpp.enabled': { meaning: 'run the OCPP central system (CSMS)' },
  'ocpp.listen': {
    meaning: 'where stations connect: `ws://HOST:PORT/ocpp/<stationId>` (`wss://` with TLS)',
    type: 'HOST:PORT',
  },
  'ocpp.tls_cert': {
    meaning: 'PEM certificate (chain); with `tls_key`, Security Profile 2 (`wss://`)',
    type: 'path',
  },
  'ocpp.tls_key': { meaning: 'PEM private key for `tls_cert`', type: 'path' },
  'ocpp.tls_ca': {
    meaning:
      'PEM CA(s) that issue station client certificates: Security Profile 3 (a station is admitted by a certificate whose CN is its id; needs `tls_cert`/`tls_key`)',
    type: 'path',
  },
  'ocpp.signing_ca_cert': {
    meaning:
      "PEM certificate of the operator CA that signs 2.0.1 stations' CSRs (SignCertificate → CertificateSigned)",
    type: 'path',
  },
  'ocpp.signing_ca_key': {
    meaning: "that CA's private key (set together with `signing_ca_cert`)",
    type: 'path',
  },
  'ocpp.signed_cert_days': { meaning: 'validity of the station certificates the CA signs, in days' },
  'ocpp.auto_accept': {
    meaning: 'accept stations that are not configured, without credentials (labs only)',
  },
  'ocpp.heartbeat_interval': {
    meaning: 'heartbeat interval sent in BootNotification; silence for twice this marks a station offline',
    type: 'seconds or duration',
  },
  'ocpp.call_timeout': {
    meaning: 'how long a call to a station (SetChargingProfile, Reset, …) may take',
    type: 'seconds or duration',
  },
  'ocpp.max_message_bytes': {
    meaning: 'largest WebSocket message a station may send; a bigger one closes the connection (1009)',
    type: 'bytes',
  },
  'ocpp.stations.<id>.password': {
    meaning: 'HTTP Basic password of station `<id>` (the username is its identity)',
    type: 'text',
  },
}

/** The parts of zod 4's schema definitions this script reads. */
interface Def {
  type: string
  innerType?: z.ZodType
  defaultValue?: unknown
  shape?: Record<string, z.ZodType>
  element?: z.ZodType
  entries?: Record<string, string>
  valueType?: z.ZodType
  in?: z.ZodType
}

const defOf = (schema: z.ZodType): Def => (schema as unknown as { _zod: { def: Def } })._zod.def

interface Row {
  /** Key path as shown. */
  key: string
  /** Key path for DOCS. */
  docKey: string
  type: string
  default: string
}

const WRAPPERS = new Set(['optional', 'default', 'prefault', 'nullable', 'readonly', 'nonoptional', 'catch'])

/** Strip optional/default wrappers, remembering the outermost default. */
function unwrap(schema: z.ZodType): { inner: z.ZodType; defaultValue?: unknown; hasDefault: boolean } {
  let current = schema
  let defaultValue: unknown
  let hasDefault = false
  for (let def = defOf(current); WRAPPERS.has(def.type); def = defOf(current)) {
    if (!hasDefault && (def.type === 'default' || def.type === 'prefault')) {
      defaultValue = def.defaultValue
      hasDefault = true
    }
    current = def.innerType!
  }
  return { inner: current, defaultValue, hasDefault }
}

function typeName(schema: z.ZodType): string {
  const def = defOf(unwrap(schema).inner)
  switch (def.type) {
    case 'string':
      return 'text'
    case 'number':
      return 'number'
    case 'boolean':
      return 'boolean'
    case 'enum':
      return Object.values(def.entries ?? {})
        .map((value) => `\`${value}\``)
        .join(' \\| ')
    case 'array':
      return `list of ${typeName(def.element!)}`
    case 'pipe':
      return typeName(def.in!)
    case 'union':
      return 'text or number'
    default:
      return def.type
  }
}

/** A default as it would be written in config.toml. */
function tomlValue(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value)
  if (Array.isArray(value)) return `[${value.map(tomlValue).join(', ')}]`
  return String(value)
}

function defaultText(schema: z.ZodType): string {
  const { defaultValue, hasDefault } = unwrap(schema)
  if (!hasDefault) return defOf(schema).type === 'optional' ? 'unset' : 'required'
  return `\`${tomlValue(defaultValue)}\``
}

const isObject = (schema: z.ZodType): boolean => defOf(unwrap(schema).inner).type === 'object'

/** Leaf rows of an object schema; same-shaped sibling tables collapse into one row per key. */
function rowsOf(schema: z.ZodType, prefix: string, docPrefix: string): Row[] {
  const shape = defOf(unwrap(schema).inner).shape ?? {}
  const rows: Row[] = []
  const entries = Object.entries(shape)
  const tables = entries.filter(([, child]) => isObject(child))
  const sameShape =
    tables.length >= 3 &&
    tables.length === entries.length &&
    new Set(tables.map(([, child]) => Object.keys(defOf(unwrap(child).inner).shape ?? {}).join(','))).size ===
      1
  if (sameShape) {
    const names = tables.map(([name]) => name)
    const family = `<${names.join('\\|')}>`
    const first = tables[0]![1]
    for (const leaf of Object.keys(defOf(unwrap(first).inner).shape ?? {})) {
      const leafOf = (table: z.ZodType) => defOf(unwrap(table).inner).shape![leaf]!
      rows.push({
        key: `${prefix}${family}.${leaf}`,
        docKey: `${docPrefix}*.${leaf}`,
        type: typeName(leafOf(first)),
        default: tables.map(([, table]) => defaultText(leafOf(table))).join(' '),
      })
    }
    return rows
  }
  for (const [name, child] of entries) {
    const key = `${prefix}${name}`
    const docKey = `${docPrefix}${name}`
    const { inner } = unwrap(child)
    const def = defOf(inner)
    if (def.type === 'object') rows.push(...rowsOf(child, `${key}.`, `${docKey}.`))
    else if (def.type === 'record' && defOf(unwrap(def.valueType!).inner).type === 'object') {
      rows.push(...rowsOf(def.valueType!, `${key}.<id>.`, `${docKey}.<id>.`))
    } else if (def.type === 'record') {
      rows.push({ key: `${key}.<id>`, docKey: `${docKey}.<id>`, type: 'table', default: defaultText(child) })
    } else {
      rows.push({ key, docKey, type: typeName(child), default: defaultText(child) })
    }
  }
  return rows
}

const escapeCell = (text: string): string => text.replaceAll('\n', ' ')

function table(rows: readonly Row[], missing: string[]): string[] {
  const lines = ['| key | type | default | meaning |', '|---|---|---|---|']
  for (const row of rows) {
    const doc = DOCS[row.docKey]
    if (!doc) {
      missing.push(row.docKey)
      continue
    }
    lines.push(
      `| \`${row.key}\` | ${escapeCell(doc.type ?? row.type)} | ${escapeCell(doc.default ?? row.default)} | ${escapeCell(doc.meaning)} |`,
    )
  }
  return lines
}

function generate(): string {
  const missing: string[] = []
  const used = new Set<string>()
  const nodeRows = rowsOf(configSchema, '', '')
  for (const row of nodeRows) used.add(row.docKey)
  const lines = [
    '<!-- generated by `npm run docs` (scripts/gen-config-docs.ts) from the config schemas; edit those, not this block -->',
    ...table(nodeRows, missing),
    '',
    '### Plugin settings',
    '',
    'Each plugin is a table `[plugins.<id>]` in `config.toml`, off unless `enabled = true`. Its keys',
    'are checked with the rest of the configuration before anything starts.',
  ]
  for (const plugin of builtinPlugins) {
    const rows: Row[] = [
      { key: 'enabled', docKey: `${plugin.id}.enabled`, type: 'boolean', default: '`false`' },
      ...rowsOf(plugin.configSchema, '', `${plugin.id}.`),
    ]
    for (const row of rows) used.add(row.docKey)
    lines.push(
      '',
      `#### \`[plugins.${plugin.id}]\``,
      '',
      `${plugin.description}.`,
      '',
      ...table(rows, missing),
    )
  }
  const stale = Object.keys(DOCS).filter((key) => !used.has(key))
  if (missing.length > 0 || stale.length > 0) {
    if (missing.length > 0) console.error(`no description in DOCS for: ${missing.join(', ')}`)
    if (stale.length > 0) console.error(`DOCS describes keys the schemas do not have: ${stale.join(', ')}`)
    process.exit(1)
  }
  return lines.join('\n')
}

const block = generate()
// Read the README only now, just before writing, so a concurrent edit elsewhere in it survives.
const readme = await readFile(README, 'utf8')
const begin = readme.indexOf(BEGIN)
const end = readme.indexOf(END)
if (begin < 0 || end < begin || readme.indexOf(BEGIN, begin + 1) >= 0 || readme.indexOf(END, end + 1) >= 0) {
  console.error(`README.md must hold exactly one ${BEGIN} … ${END} block`)
  process.exit(1)
}
const updated = `${readme.slice(0, begin + BEGIN.length)}\n${block}\n${readme.slice(end)}`
if (process.argv.includes('--check')) {
  if (updated !== readme) {
    console.error('README.md: the configuration reference is out of date; run npm run docs')
    process.exit(1)
  }
  console.log('README.md: the configuration reference is up to date')
} else if (updated === readme) {
  console.log('README.md: the configuration reference is up to date')
} else {
  await writeFile(README, updated)
  console.log('README.md: configuration reference regenerated')
}
