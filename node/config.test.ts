import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, describe, expect, test } from 'vitest'
import { cleanupAll, tempDir } from '../test/helpers/node-process.ts'
import {
  envName,
  initialConfigText,
  type LoadConfigOptions,
  loadConfig,
  parseConfigText,
  parseDuration,
  parseSize,
} from './config.ts'
import type { ConfigError } from './errors.ts'

const MiB = 1024 ** 2
const GiB = 1024 ** 3
const DAY = 86_400_000

afterEach(cleanupAll)

/** Write a config file in a fresh temp dir and return its path. */
async function configFile(text: string): Promise<string> {
  const file = join(await tempDir(), 'config.toml')
  await writeFile(file, text)
  return file
}

/** Load expecting failure; returns the ConfigError (fails the test if loading succeeds). */
async function loadError(options: LoadConfigOptions): Promise<ConfigError> {
  const error = await loadConfig({ env: {}, ...options }).then(
    () => undefined,
    (caught: unknown) => caught,
  )
  expect(error, 'loadConfig should have thrown').toBeInstanceOf(Error)
  expect((error as Error).name).toBe('ConfigError')
  return error as ConfigError
}

const issuePaths = (error: ConfigError): string[] => error.issues.map((issue) => issue.path)

describe('loadConfig defaults', () => {
  test('an empty environment and no file give the documented defaults', async () => {
    const config = await loadConfig({ env: {} })
    expect(config.org).toBeUndefined()
    expect(config.api.listen).toBe('127.0.0.1:7410')
    expect(config.api.max_body_bytes).toBe(16 * MiB)
    expect(config.api.ingest_tokens).toEqual([])
    expect(config.federation.listen).toEqual(['/ip4/0.0.0.0/tcp/7400'])
    expect(config.nats.url).toBeUndefined()
    expect(config.nats.port).toBe(0)
    expect(config.nats.max_memory_store).toBe(256 * MiB)
    expect(config.nats.max_file_store).toBe(10 * GiB)
    expect(config.streams.telemetry).toEqual({ max_age: 7 * DAY, max_bytes: GiB })
    expect(config.streams.events).toEqual({ max_age: 30 * DAY, max_bytes: 256 * MiB })
    expect(config.streams.standing.max_age).toBe(365 * DAY)
    expect(config.streams.outbox).toEqual({ max_age: DAY, max_bytes: 64 * MiB })
    expect(config.log).toEqual({ level: 'info', format: 'json' })
    expect(config.shutdown_timeout).toBe(10_000)
    expect(config.plugins).toEqual({})
  })

  test('OE_NODE_DATA_DIR and unrelated variables are not reported as settings', async () => {
    const config = await loadConfig({ env: { OE_NODE_DATA_DIR: '/srv/oe', PATH: '/usr/bin', HOME: '/root' } })
    expect(config.api.listen).toBe('127.0.0.1:7410')
  })
})

describe('loadConfig precedence: defaults < file < OE_NODE_* env < flags', () => {
  const fileText = '[api]\nlisten = "127.0.0.1:1111"\ningest_tokens = ["file-token-0123456789"]\n'
  const env = { OE_NODE_API_LISTEN: '127.0.0.1:2222' }

  test('the file overrides the defaults', async () => {
    const config = await loadConfig({ file: await configFile(fileText), env: {} })
    expect(config.api.listen).toBe('127.0.0.1:1111')
  })

  test('the environment overrides the file', async () => {
    const config = await loadConfig({ file: await configFile(fileText), env })
    expect(config.api.listen).toBe('127.0.0.1:2222')
    // Only the one key is replaced: the rest of the file's [api] table stays.
    expect(config.api.ingest_tokens).toEqual(['file-token-0123456789'])
  })

  test('a flag overrides the environment and the file', async () => {
    const config = await loadConfig({
      file: await configFile(fileText),
      env,
      flags: { 'api.listen': '127.0.0.1:3333' },
    })
    expect(config.api.listen).toBe('127.0.0.1:3333')
    expect(config.api.ingest_tokens).toEqual(['file-token-0123456789'])
  })

  test('a flag left undefined does not hide the environment', async () => {
    const config = await loadConfig({
      file: await configFile(fileText),
      env,
      flags: { 'api.listen': undefined },
    })
    expect(config.api.listen).toBe('127.0.0.1:2222')
  })

  test('list and number flags are taken as given', async () => {
    const config = await loadConfig({
      env: { OE_NODE_FEDERATION_LISTEN: '/ip4/127.0.0.1/tcp/1' },
      flags: {
        'federation.listen': ['/ip4/127.0.0.1/tcp/7401', '/ip4/127.0.0.1/tcp/7402'],
        'nats.port': 4222,
      },
    })
    expect(config.federation.listen).toEqual(['/ip4/127.0.0.1/tcp/7401', '/ip4/127.0.0.1/tcp/7402'])
    expect(config.nats.port).toBe(4222)
  })
})

describe('loadConfig environment variables', () => {
  test('envName maps a setting path to its variable', () => {
    expect(envName('api.listen')).toBe('OE_NODE_API_LISTEN')
    expect(envName('streams.telemetry.max_age')).toBe('OE_NODE_STREAMS_TELEMETRY_MAX_AGE')
  })

  test('list settings split on commas, trimming blanks', async () => {
    const config = await loadConfig({
      env: {
        OE_NODE_FEDERATION_LISTEN: '/ip4/0.0.0.0/tcp/7400, /ip6/::/tcp/7400,',
        OE_NODE_API_INGEST_TOKENS: 'aaaaaaaaaaaaaaaa,bbbbbbbbbbbbbbbb',
      },
    })
    expect(config.federation.listen).toEqual(['/ip4/0.0.0.0/tcp/7400', '/ip6/::/tcp/7400'])
    expect(config.api.ingest_tokens).toEqual(['aaaaaaaaaaaaaaaa', 'bbbbbbbbbbbbbbbb'])
  })

  test('numbers, durations and sizes are read from strings', async () => {
    const config = await loadConfig({
      env: {
        OE_NODE_NATS_PORT: '4222',
        OE_NODE_SHUTDOWN_TIMEOUT: '1500ms',
        OE_NODE_STREAMS_PEER_MAX_AGE: '2d',
        OE_NODE_STREAMS_PEER_MAX_BYTES: '512MiB',
        OE_NODE_LOG_LEVEL: 'debug',
        OE_NODE_NATS_URL: 'nats://127.0.0.1:4222',
      },
    })
    expect(config.nats.port).toBe(4222)
    expect(config.shutdown_timeout).toBe(1500)
    expect(config.streams.peer).toEqual({ max_age: 2 * DAY, max_bytes: 512 * MiB })
    expect(config.log.level).toBe('debug')
    expect(config.nats.url).toBe('nats://127.0.0.1:4222')
  })

  test('a bad value from the environment is reported with the variable that set it', async () => {
    const error = await loadError({ env: { OE_NODE_API_LISTEN: 'localhost' } })
    expect(issuePaths(error)).toEqual(['api.listen (env OE_NODE_API_LISTEN)'])
    expect(error.message).toContain('api.listen (env OE_NODE_API_LISTEN)')
  })

  // Regression (fixed): "-1 for unlimited" works in the TOML file (a number) but not from the environment,
  // where every value is a string and parseSize only accepts digits; the error message itself
  // suggests -1.
  test('OE_NODE_*_MAX_BYTES=-1 means unlimited, as in the file', async () => {
    const config = await loadConfig({ env: { OE_NODE_STREAMS_TELEMETRY_MAX_BYTES: '-1' } })
    expect(config.streams.telemetry.max_bytes).toBe(-1)
  })
})

describe('durations and sizes', () => {
  test('parseDuration reads units and plain milliseconds', () => {
    expect(parseDuration('500ms')).toBe(500)
    expect(parseDuration('60s')).toBe(60_000)
    expect(parseDuration('1.5s')).toBe(1500)
    expect(parseDuration('5m')).toBe(300_000)
    expect(parseDuration('36h')).toBe(36 * 3_600_000)
    expect(parseDuration('7d')).toBe(7 * DAY)
    expect(parseDuration(2500)).toBe(2500)
  })

  test('parseDuration refuses what is not a duration', () => {
    for (const bad of ['7w', '-1s', 's', '', '1 day', -1, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(parseDuration(bad), `parseDuration(${String(bad)})`).toBeUndefined()
    }
  })

  test('parseSize reads decimal and binary units, plain bytes and -1', () => {
    expect(parseSize('512MiB')).toBe(512 * MiB)
    expect(parseSize('1GiB')).toBe(GiB)
    expect(parseSize('2KiB')).toBe(2048)
    expect(parseSize('1GB')).toBe(1e9)
    expect(parseSize('512MB')).toBe(512e6)
    expect(parseSize('1024')).toBe(1024)
    expect(parseSize(-1)).toBe(-1)
    expect(parseSize(4096)).toBe(4096)
  })

  test('parseSize refuses what is not a size', () => {
    for (const bad of ['-2', '1XB', 'MiB', '', -2, 1.5, Number.NaN]) {
      expect(parseSize(bad), `parseSize(${String(bad)})`).toBeUndefined()
    }
  })

  test('durations and sizes in the file become milliseconds and bytes', async () => {
    const file = await configFile(
      [
        'shutdown_timeout = 2500',
        '[nats]',
        'max_file_store = -1',
        'max_memory_store = "64MiB"',
        '[streams.telemetry]',
        'max_age = "7d"',
        'max_bytes = "512MiB"',
        '[streams.events]',
        'max_age = "36h"',
        'max_bytes = -1',
        '',
      ].join('\n'),
    )
    const config = await loadConfig({ file, env: {} })
    expect(config.shutdown_timeout).toBe(2500)
    expect(config.nats.max_file_store).toBe(-1)
    expect(config.nats.max_memory_store).toBe(64 * MiB)
    expect(config.streams.telemetry).toEqual({ max_age: 7 * DAY, max_bytes: 512 * MiB })
    expect(config.streams.events).toEqual({ max_age: 36 * 3_600_000, max_bytes: -1 })
    // Untouched streams keep their defaults.
    expect(config.streams.control).toEqual({ max_age: 7 * DAY, max_bytes: 64 * MiB })
  })

  test('the API body limit cannot be unlimited', async () => {
    const error = await loadError({ flags: { 'api.max_body_bytes': -1 } })
    expect(issuePaths(error)).toEqual(['api.max_body_bytes (flag)'])
  })
})

describe('API limits and host names', () => {
  test('api.max_records defaults to 100000; the file and OE_NODE_API_MAX_RECORDS set it', async () => {
    expect((await loadConfig({ env: {} })).api.max_records).toBe(100_000)
    const file = await configFile('[api]\nmax_records = 5000\n')
    expect((await loadConfig({ file, env: {} })).api.max_records).toBe(5000)
    expect((await loadConfig({ env: { OE_NODE_API_MAX_RECORDS: '250' } })).api.max_records).toBe(250)
  })

  test('api.max_records must be a whole number from 1 to 10000000', async () => {
    for (const value of [0, -1, 1.5, 10_000_001]) {
      const error = await loadError({ flags: { 'api.max_records': value } })
      expect(issuePaths(error), String(value)).toEqual(['api.max_records (flag)'])
    }
  })

  test('api.allowed_hosts: host names, empty by default, comma-separated from the environment', async () => {
    expect((await loadConfig({ env: {} })).api.allowed_hosts).toEqual([])
    const file = await configFile('[api]\nallowed_hosts = ["node.example.internal", "Metrics.Local"]\n')
    expect((await loadConfig({ file, env: {} })).api.allowed_hosts).toEqual([
      'node.example.internal',
      'metrics.local',
    ])
    const env = { OE_NODE_API_ALLOWED_HOSTS: 'a.example, b.example' }
    expect((await loadConfig({ env })).api.allowed_hosts).toEqual(['a.example', 'b.example'])
    for (const bad of ['http://node.example', 'node.example:7410', 'a b', '']) {
      const error = await loadError({ flags: { 'api.allowed_hosts': [bad] } })
      expect(issuePaths(error), bad).toEqual(['api.allowed_hosts.0 (flag)'])
    }
  })
})

describe('federation batching', () => {
  test('defaults: 500 records, 5 ms wait, 8 batches of credit; the file and OE_NODE_* set them', async () => {
    const defaults = await loadConfig({})
    expect(defaults.federation).toMatchObject({ batch_records: 500, batch_wait: 5, credit: 8 })
    const file = await configFile('[federation]\nbatch_records = 2000\nbatch_wait = "20ms"\n')
    const config = await loadConfig({ file, env: { OE_NODE_FEDERATION_CREDIT: '16' } })
    expect(config.federation).toMatchObject({ batch_records: 2000, batch_wait: 20, credit: 16 })
  })

  test('out-of-range batching is refused with the key path and the range', async () => {
    const file = await configFile('[federation]\nbatch_records = 0\nbatch_wait = "1m"\ncredit = 1000\n')
    const error = await loadError({ file })
    const byPath = Object.fromEntries(error.issues.map((issue) => [issue.path, issue.message]))
    expect(byPath['federation.batch_records']).toMatch(/at least 1 record/)
    expect(byPath['federation.batch_wait']).toMatch(/at most 10s/)
    expect(byPath['federation.credit']).toMatch(/at most 256 batches/)
  })

  test('federation.noise_crypto: "auto" by default, set from the file or OE_NODE_*, anything else refused by name', async () => {
    expect((await loadConfig({})).federation.noise_crypto).toBe('auto')
    const file = await configFile('[federation]\nnoise_crypto = "wasm"\n')
    expect((await loadConfig({ file })).federation.noise_crypto).toBe('wasm')
    expect(
      (await loadConfig({ env: { OE_NODE_FEDERATION_NOISE_CRYPTO: 'openssl' } })).federation.noise_crypto,
    ).toBe('openssl')
    const error = await loadError({ file: await configFile('[federation]\nnoise_crypto = "aes"\n') })
    const byPath = Object.fromEntries(error.issues.map((issue) => [issue.path, issue.message]))
    expect(byPath['federation.noise_crypto']).toMatch(/must be "auto", "openssl" or "wasm"/)
  })
})

describe('loadConfig errors', () => {
  test('every problem from file, env and flags is reported at once, each with its key path', async () => {
    const file = await configFile(
      [
        '[api]',
        'listen = "nowhere"',
        '[streams.telemetry]',
        'max_age = "7 fortnights"',
        '[log]',
        'level = "chatty"',
        '',
      ].join('\n'),
    )
    const error = await loadError({
      file,
      env: { OE_NODE_BOGUS: 'x' },
      flags: { 'nats.port': 70_000 },
    })
    expect(issuePaths(error).sort()).toEqual(
      [
        'api.listen',
        'env OE_NODE_BOGUS',
        'log.level',
        'nats.port (flag)',
        'streams.telemetry.max_age',
      ].sort(),
    )
    expect(error.source).toBe(file)
    for (const path of issuePaths(error)) expect(error.message).toContain(path)
    const byPath = Object.fromEntries(error.issues.map((issue) => [issue.path, issue.message]))
    expect(byPath['env OE_NODE_BOGUS']).toMatch(/not an oe-node setting/)
    expect(byPath['nats.port (flag)']).toMatch(/port/)
    expect(byPath['api.listen']).toMatch(/HOST:PORT/)
    expect(byPath['streams.telemetry.max_age']).toContain('7 fortnights')
  })

  test('a non-numeric port from a flag is reported with its source', async () => {
    const error = await loadError({ flags: { 'nats.port': 'four' } })
    expect(issuePaths(error)).toEqual(['nats.port (flag)'])
  })

  test('a bad entry in a list names the list', async () => {
    const error = await loadError({
      env: { OE_NODE_FEDERATION_LISTEN: '/ip4/0.0.0.0/tcp/7400,not a multiaddr' },
    })
    expect(issuePaths(error)).toEqual(['federation.listen.1 (env OE_NODE_FEDERATION_LISTEN)'])
  })

  test('unknown keys in the file are refused, naming the key and its table', async () => {
    const file = await configFile('colour = "blue"\n[api]\nlisten = "127.0.0.1:7410"\nlistne = "x"\n')
    const error = await loadError({ file })
    const reported = error.issues.map((issue) => `${issue.path}: ${issue.message}`)
    expect(reported).toHaveLength(2)
    expect(reported.some((line) => line.includes('colour'))).toBe(true)
    expect(reported.some((line) => line.startsWith('api') && line.includes('listne'))).toBe(true)
  })

  test('a TOML syntax error is a ConfigError on the file', async () => {
    const file = await configFile('[api]\nlisten = "127.0.0.1:7410"\nmax_body_bytes = \n')
    const error = await loadError({ file })
    expect(error.issues).toHaveLength(1)
    expect(error.issues[0]!.path).toBe('(file)')
    expect(error.issues[0]!.message).toMatch(/TOML syntax error/)
    expect(error.source).toBe(file)
    expect(error.message).toContain(file)
  })

  // Regression (fixed): parseConfigText promises "a ConfigError naming the line", but it keeps only the first
  // line of smol-toml's message ("Invalid TOML document: invalid value"), which drops the
  // line/column that smol-toml gives (TomlError.line / .column and the later message lines).
  test('a TOML syntax error names the line it is on', () => {
    let caught: unknown
    try {
      parseConfigText('org = "x"\n[api]\nlisten = \n', 'config.toml')
    } catch (error) {
      caught = error
    }
    expect((caught as Error).name).toBe('ConfigError')
    expect((caught as ConfigError).issues[0]!.message).toMatch(/line 3|3:/)
  })

  test('a missing file is fine unless required', async () => {
    const missing = join(await tempDir(), 'absent.toml')
    const config = await loadConfig({ file: missing, env: {} })
    expect(config.api.listen).toBe('127.0.0.1:7410')

    const error = await loadError({ file: missing, required: true })
    expect(issuePaths(error)).toEqual(['(file)'])
    expect(error.issues[0]!.message).toMatch(/cannot read/)
    expect(error.message).toContain(missing)
  })

  test('a file that exists but cannot be read is an error even when not required', async () => {
    const dir = await tempDir()
    const error = await loadError({ file: dir })
    expect(issuePaths(error)).toEqual(['(file)'])
  })
})

describe('initialConfigText', () => {
  test('parses back with loadConfig, keeping the org and the defaults', async () => {
    const org = 'Gridco "North" \\ Energy Ltd ⚡'
    const file = await configFile(initialConfigText(org))
    const config = await loadConfig({ file, env: {}, required: true })
    expect(config.org).toBe(org)
    expect(config.api.listen).toBe('127.0.0.1:7410')
    expect(config.api.ingest_tokens).toEqual([])
    expect(config.federation.listen).toEqual(['/ip4/0.0.0.0/tcp/7400'])
    expect(config.nats.url).toBeUndefined()
    expect(config.streams.telemetry).toEqual({ max_age: 7 * DAY, max_bytes: GiB })
    expect(config.log).toEqual({ level: 'info', format: 'json' })
  })

  test('the environment still overrides what init wrote', async () => {
    const file = await configFile(initialConfigText('Gridco'))
    const config = await loadConfig({ file, env: { OE_NODE_API_LISTEN: '127.0.0.1:0' } })
    expect(config.api.listen).toBe('127.0.0.1:0')
    expect(config.org).toBe('Gridco')
  })

  // Regression (fixed): initialConfigText quotes the org with JSON.stringify, which leaves DEL (U+007F) raw;
  // TOML forbids control characters in strings, so `oe-node init --org …` can write a
  // config.toml that the next `start` refuses.
  test('writes valid TOML for an org name holding a control character', () => {
    expect(() => parseConfigText(initialConfigText('Grid\u007fco'), 'config.toml')).not.toThrow()
  })
})
