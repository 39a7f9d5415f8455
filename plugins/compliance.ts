/**
 * The compliance suite every plugin passes (as Hono runs `common.case.test.ts` against every
 * router): well-formed metadata, a strict config schema whose errors name `plugins.<id>.<key>`,
 * a clean lifecycle, only valid records published, and silence after stop. It runs the plugin
 * against an in-memory data plane that checks and records every call.
 *
 * @example
 * // plugins/echo/echo.test.ts
 * runPluginCompliance(echoPlugin, { validConfig: { rid: 'm1' }, invalidConfig: { rid: 7 } })
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, describe, expect, test, vi } from 'vitest'
import type { z } from 'zod'
import {
  encodeCbor,
  isResourceId,
  isResourceKind,
  type Logger,
  parseResource,
  parseTelemetryRecord,
  type Resource,
  type ResourceKind,
  type TelemetryRecord,
} from '../data-plane/index.ts'
import type {
  ControlMessage,
  ControlSelector,
  PluginContext,
  PluginDataPlane,
  PluginDefinition,
  PluginInstance,
  PluginMetrics,
} from './api.ts'
import type { PluginConfigError } from './errors.ts'
import { validatePluginConfig } from './host.ts'

export interface RecordedEvent {
  kind: ResourceKind
  rid: string
  type: string
  event: Record<string, unknown>
}

/** A data plane in memory: checks everything as the host's facade does, and keeps it. */
export interface FakeDataPlane extends PluginDataPlane {
  telemetry: TelemetryRecord[]
  events: RecordedEvent[]
  /** Every upsert, in order; `resources` holds the latest per `<kind>.<rid>`. */
  upserts: Resource[]
  resources: Map<string, Resource>
  selectors: ControlSelector[]
  /** What the checks refused, as `what: why`. */
  invalid: string[]
  /** Calls of publishTelemetry, publishEvent and upsertResource so far. */
  calls: number
  /** Deliver a control command to the handlers whose selector matches, as `oe.ctl.…` would. */
  control(message: Omit<ControlMessage, 'payload'> & { payload: Record<string, unknown> }): Promise<void>
}

const SUBJECT_TOKEN = /^[A-Za-z0-9_-]{1,64}$/

export function createFakeDataPlane(): FakeDataPlane {
  const handlers: { selector: ControlSelector; handler: (message: ControlMessage) => Promise<void> }[] = []
  const fake: FakeDataPlane = {
    telemetry: [],
    events: [],
    upserts: [],
    resources: new Map(),
    selectors: [],
    invalid: [],
    calls: 0,
    publishTelemetry: async (records) => {
      fake.calls += 1
      const now = Date.now()
      const checked = records.map((record, index) => {
        try {
          return parseTelemetryRecord(record, now)
        } catch (error) {
          fake.invalid.push(
            `telemetry record ${index} ${JSON.stringify(record)}: ${(error as Error).message}`,
          )
          throw error
        }
      })
      fake.telemetry.push(...checked)
    },
    publishEvent: async (kind, rid, type, event) => {
      fake.calls += 1
      const problem = !isResourceKind(kind)
        ? `kind '${kind}' is not a resource kind`
        : !isResourceId(rid)
          ? `rid '${rid}' is not a resource id`
          : !SUBJECT_TOKEN.test(type)
            ? `type '${type}' is not a subject token`
            : typeof event !== 'object' || event === null || Array.isArray(event)
              ? 'the event is not an object'
              : undefined
      if (problem) {
        fake.invalid.push(`event ${kind}.${rid}.${type}: ${problem}`)
        throw new Error(problem)
      }
      encodeCbor(event)
      fake.events.push({ kind, rid, type, event: structuredClone(event) })
    },
    upsertResource: async (resource) => {
      fake.calls += 1
      const { kind, rid, updated: _updated, ...rest } = resource
      try {
        const checked = parseResource(kind, rid, rest)
        fake.upserts.push(checked)
        fake.resources.set(`${kind}.${rid}`, checked)
      } catch (error) {
        fake.invalid.push(`resource ${kind}.${rid}: ${(error as Error).message}`)
        throw error
      }
    },
    getResource: async (kind, rid) => fake.resources.get(`${kind}.${rid}`),
    onControl: (selector, handler) => {
      fake.selectors.push(selector)
      handlers.push({ selector, handler })
    },
    control: async (message) => {
      for (const { selector, handler } of handlers) {
        if (selector.kinds.includes(message.kind) && selector.commands.includes(message.command))
          await handler(message)
      }
    },
  }
  return fake
}

/** A logger that keeps warnings and errors, so tests can look at them. */
export function createRecordingLogger(): Logger & {
  entries: { level: string; obj: object; msg?: string }[]
} {
  const entries: { level: string; obj: object; msg?: string }[] = []
  const logger = {
    entries,
    child: () => logger,
    debug: () => {},
    info: () => {},
    warn: (obj: object, msg?: string) => entries.push({ level: 'warn', obj, ...(msg ? { msg } : {}) }),
    error: (obj: object, msg?: string) => entries.push({ level: 'error', obj, ...(msg ? { msg } : {}) }),
  }
  return logger
}

function createMetrics(id: string): PluginMetrics & { values: Map<string, number> } {
  const values = new Map<string, number>()
  return {
    prefix: `oe_plugin_${id.replaceAll('-', '_')}_`,
    values,
    counter: (name) => ({ inc: (value = 1) => values.set(name, (values.get(name) ?? 0) + value) }),
    gauge: (name) => ({ set: (value) => values.set(name, value) }),
  }
}

export interface PluginHarness<Schema extends z.ZodType> {
  context: PluginContext<z.output<Schema>>
  instance: PluginInstance
  dataPlane: FakeDataPlane
  logger: ReturnType<typeof createRecordingLogger>
  metrics: ReturnType<typeof createMetrics>
  /** The plugin's own signal, as the host aborts it on stop. */
  abort: AbortController
  /** Abort, stop, and remove the data folder. */
  dispose(): Promise<void>
}

/** Create a plugin as the host would, with `config` (the TOML slice) parsed by its schema. */
export async function createPluginHarness<Schema extends z.ZodType>(
  definition: PluginDefinition<Schema>,
  config: Record<string, unknown>,
): Promise<PluginHarness<Schema>> {
  const dataDir = await mkdtemp(join(tmpdir(), `oe-plugin-${definition.id}-`))
  const dataPlane = createFakeDataPlane()
  const logger = createRecordingLogger()
  const metrics = createMetrics(definition.id)
  const abort = new AbortController()
  const context = {
    id: definition.id,
    logger,
    config: definition.configSchema.parse(config),
    dataDir,
    signal: abort.signal,
    dataPlane,
    metrics,
  }
  const instance = await definition.create(context)
  let disposed = false
  return {
    context,
    instance,
    dataPlane,
    logger,
    metrics,
    abort,
    dispose: async () => {
      if (disposed) return
      disposed = true
      abort.abort()
      await instance.stop?.()
      await rm(dataDir, { recursive: true, force: true })
    },
  }
}

export interface PluginComplianceCases {
  /** A `[plugins.<id>]` slice (without `enabled`) that the plugin accepts and can run with in a test. */
  validConfig: Record<string, unknown>
  /** A slice the schema must refuse; at least one of its keys must be named in the error. */
  invalidConfig: Record<string, unknown>
  /** Time the plugin runs for in the lifecycle cases (fake timers); default 60 s. */
  runMs?: number
}

/** The timers a plugin schedules with, and the clock; sockets and microtasks stay real. */
const FAKED = ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date'] as const

export function runPluginCompliance<Schema extends z.ZodType>(
  definition: PluginDefinition<Schema>,
  cases: PluginComplianceCases,
): void {
  const { id } = definition
  const runMs = cases.runMs ?? 60_000

  describe(`plugin compliance: ${id}`, () => {
    const harnesses: PluginHarness<Schema>[] = []
    const harness = async (): Promise<PluginHarness<Schema>> => {
      const created = await createPluginHarness(definition, cases.validConfig)
      harnesses.push(created)
      return created
    }
    const configIssues = (slice: Record<string, unknown>): { path: string; message: string }[] => {
      try {
        validatePluginConfig({ [id]: { enabled: true, ...slice } }, [definition])
      } catch (error) {
        expect((error as Error).name).toBe('PluginConfigError')
        return (error as PluginConfigError).issues
      }
      return []
    }

    afterEach(async () => {
      while (harnesses.length > 0) await harnesses.pop()!.dispose()
      vi.useRealTimers()
    })

    test('id, version and description are well-formed', () => {
      expect(id).toMatch(/^[a-z][a-z0-9-]{0,31}$/)
      expect(definition.version).toMatch(/^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?$/)
      expect(typeof definition.description).toBe('string')
      expect(definition.description.trim()).toBe(definition.description)
      expect(definition.description.length).toBeGreaterThan(10)
      expect(definition.description.length).toBeLessThanOrEqual(200)
      expect(definition.description).not.toContain('\n')
    })

    test('the config schema accepts the valid config', () => {
      const enabled = validatePluginConfig({ [id]: { enabled: true, ...cases.validConfig } }, [definition])
      expect(enabled).toHaveLength(1)
      expect(enabled[0]!.definition).toBe(definition)
    })

    test('the config schema rejects the invalid config and names plugins.<id>.<key>', () => {
      const issues = configIssues(cases.invalidConfig)
      expect(issues.length).toBeGreaterThan(0)
      for (const issue of issues) expect(issue.path.startsWith(`plugins.${id}.`)).toBe(true)
      const named = Object.keys(cases.invalidConfig).map((key) => `plugins.${id}.${key}`)
      expect(
        issues.some((issue) =>
          named.some((path) => issue.path === path || issue.path.startsWith(`${path}.`)),
        ),
      ).toBe(true)
    })

    test('an unknown key is refused by name', () => {
      const issues = configIssues({ ...cases.validConfig, no_such_key: 1 })
      expect(issues).toContainEqual({ path: `plugins.${id}.no_such_key`, message: 'unknown key' })
    })

    test('create, start, ready and status work; stop twice is harmless', async () => {
      vi.useFakeTimers({ toFake: [...FAKED] })
      const { instance, dataPlane } = await harness()
      await instance.start?.({})
      await vi.advanceTimersByTimeAsync(1_000)
      if (instance.ready) await vi.waitFor(() => expect(instance.ready!()).toBe(true))
      if (instance.status) {
        const status = instance.status()
        expect(typeof status).toBe('object')
        expect(JSON.parse(JSON.stringify(status))).toEqual(status)
      }
      await instance.stop?.()
      await instance.stop?.()
      expect(dataPlane.invalid).toEqual([])
    })

    test('start twice is harmless', async () => {
      vi.useFakeTimers({ toFake: [...FAKED] })
      const { instance, dataPlane } = await harness()
      await instance.start?.({})
      await instance.start?.({})
      await vi.advanceTimersByTimeAsync(1_000)
      expect(dataPlane.invalid).toEqual([])
    })

    test('everything published is valid per the model', async () => {
      vi.useFakeTimers({ toFake: [...FAKED] })
      const { instance, dataPlane, logger } = await harness()
      await instance.start?.({})
      await vi.advanceTimersByTimeAsync(runMs)
      await instance.stop?.()
      expect(dataPlane.invalid).toEqual([])
      expect(logger.entries.filter((entry) => entry.level === 'error')).toEqual([])
      for (const selector of dataPlane.selectors) {
        expect(selector.kinds.length).toBeGreaterThan(0)
        for (const kind of selector.kinds) expect(isResourceKind(kind)).toBe(true)
        for (const command of selector.commands) expect(command).toMatch(SUBJECT_TOKEN)
      }
    })

    test('nothing is published after stop', async () => {
      vi.useFakeTimers({ toFake: [...FAKED] })
      const { instance, dataPlane } = await harness()
      await instance.start?.({})
      await vi.advanceTimersByTimeAsync(runMs)
      await instance.stop?.()
      const calls = dataPlane.calls
      await vi.advanceTimersByTimeAsync(5 * 60_000)
      expect(dataPlane.calls).toBe(calls)
    })

    test('nothing is published after its signal is aborted', async () => {
      vi.useFakeTimers({ toFake: [...FAKED] })
      const { instance, dataPlane, abort } = await harness()
      await instance.start?.({})
      await vi.advanceTimersByTimeAsync(runMs)
      abort.abort()
      const calls = dataPlane.calls
      await vi.advanceTimersByTimeAsync(5 * 60_000)
      expect(dataPlane.calls).toBe(calls)
    })
  })
}
