/**
 * A worker of the `ocpp` bench suite (scripts/bench/ocpp.ts): one process that simulates many
 * OCPP 1.6-J charging stations with ocpp-rpc's RPCClient, driven by JSON lines on stdin and
 * answering with JSON lines on stdout (one answer per command, plus `disconnected` notices).
 *
 *   bun scripts/bench/ocpp-stations.ts ws://127.0.0.1:<port>/ocpp
 *
 * Commands:
 * - `{"cmd":"open","ids":[0,4,…]}`: connect stations `BENCH<id>` (at most CONNECT_CONCURRENCY at a
 *   time), each sending BootNotification and StatusNotification (connector 1 Available) as a real
 *   station does, so the first MeterValues costs the node no resource writes → `opened`.
 * - `{"cmd":"sustain","startAt":<epoch ms>,"periodMs":10000,"rounds":3,"total":N}`: every station
 *   `g` sends MeterValues at `startAt + (g / N) · periodMs + k · periodMs` for k < rounds, so the
 *   N stations of all workers together offer N / period messages per second, evenly spread
 *   → `sustained`.
 * - `{"cmd":"burst"}`: every station sends one MeterValues at once → `burst`.
 * - `{"cmd":"close"}`: close every station and exit → `closed`.
 *
 * A latency is CALL→CALLRESULT as the station sees it: from `client.call()` until its promise
 * resolves (so it includes this process's own queueing, which matters in a burst). Each
 * MeterValues carries METER_SAMPLES sampled values that the node turns into that many telemetry
 * records.
 */
import { createInterface } from 'node:readline'
import { RPCClient } from 'ocpp-rpc'

/** Stations connecting at the same time in one worker. */
const CONNECT_CONCURRENCY = 32
const CALL_TIMEOUT_MS = 20_000
const CLOSE_TIMEOUT_MS = 5_000
/** Telemetry records the node makes of one MeterValues (energy, power, voltage). */
const METER_SAMPLES = 3

type Command =
  | { cmd: 'open'; ids: number[] }
  | { cmd: 'sustain'; startAt: number; periodMs: number; rounds: number; total: number }
  | { cmd: 'burst' }
  | { cmd: 'close' }

interface Station {
  id: number
  client: RPCClient
  energyWh: number
}

const endpoint = process.argv[2]
if (!endpoint) {
  console.error('usage: bun scripts/bench/ocpp-stations.ts ws://HOST:PORT/ocpp')
  process.exit(2)
}

const stations: Station[] = []
let closing = false

function emit(message: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(message)}\n`)
}

/** Milliseconds with two decimals: enough for percentiles, short on the pipe. */
const ms = (value: number): number => Math.round(value * 100) / 100

async function openStation(id: number): Promise<{ connectMs: number; bootMs: number }> {
  const client = new RPCClient({
    endpoint,
    identity: `BENCH${id}`,
    protocols: ['ocpp1.6'],
    // The node validates strictly; the load generator does not spend CPU on it too.
    strictMode: false,
    reconnect: false,
    callTimeoutMs: CALL_TIMEOUT_MS,
  } as unknown as ConstructorParameters<typeof RPCClient>[0])
  const started = performance.now()
  await client.connect()
  const connected = performance.now()
  client.on('close', ({ code, reason }: { code?: number; reason?: string }) => {
    if (!closing) emit({ ev: 'disconnected', id, code, reason })
  })
  const station: Station = { id, client, energyWh: 1_000_000 + id * 1000 }
  stations.push(station)
  await client.call('BootNotification', {
    chargePointVendor: 'oe-bench',
    chargePointModel: 'Sim-16',
    chargePointSerialNumber: `SN-${id}`,
    firmwareVersion: '1.0.0',
  })
  await client.call('StatusNotification', { connectorId: 1, errorCode: 'NoError', status: 'Available' })
  return { connectMs: connected - started, bootMs: performance.now() - connected }
}

async function open(ids: readonly number[]): Promise<void> {
  const connectMs: number[] = []
  const bootMs: number[] = []
  const errors: string[] = []
  let next = 0
  const started = performance.now()
  await Promise.all(
    Array.from({ length: Math.min(CONNECT_CONCURRENCY, ids.length) }, async () => {
      for (let i = next++; i < ids.length; i = next++) {
        try {
          const times = await openStation(ids[i]!)
          connectMs.push(ms(times.connectMs))
          bootMs.push(ms(times.bootMs))
        } catch (error) {
          errors.push(`BENCH${ids[i]}: ${(error as Error).message}`)
        }
      }
    }),
  )
  emit({
    ev: 'opened',
    ok: connectMs.length,
    failed: errors.length,
    errors: errors.slice(0, 5),
    connectMs,
    bootMs,
    elapsedMs: ms(performance.now() - started),
    stations: stations.length,
  })
}

/** One MeterValues; resolves to its latency, or throws. */
async function meterValues(station: Station): Promise<number> {
  station.energyWh += 3
  const power = 7000 + (station.id % 400)
  const params = {
    connectorId: 1,
    meterValue: [
      {
        timestamp: new Date().toISOString(),
        sampledValue: [
          { measurand: 'Energy.Active.Import.Register', unit: 'Wh', value: String(station.energyWh) },
          { measurand: 'Power.Active.Import', unit: 'W', value: String(power) },
          { measurand: 'Voltage', unit: 'V', value: '230.4' },
        ],
      },
    ],
  }
  const started = performance.now()
  await station.client.call('MeterValues', params)
  return performance.now() - started
}

interface CallTally {
  latencies: number[]
  errors: string[]
  firstSentAt: number
  lastDoneAt: number
}

function tally(): CallTally {
  return { latencies: [], errors: [], firstSentAt: Number.POSITIVE_INFINITY, lastDoneAt: 0 }
}

async function timedCall(station: Station, result: CallTally): Promise<void> {
  result.firstSentAt = Math.min(result.firstSentAt, Date.now())
  try {
    result.latencies.push(ms(await meterValues(station)))
  } catch (error) {
    result.errors.push(`BENCH${station.id}: ${(error as Error).message}`)
  }
  result.lastDoneAt = Math.max(result.lastDoneAt, Date.now())
}

function report(ev: string, result: CallTally, extra: Record<string, unknown> = {}): void {
  emit({
    ev,
    sent: result.latencies.length + result.errors.length,
    ok: result.latencies.length,
    failed: result.errors.length,
    errors: result.errors.slice(0, 5),
    latencies: result.latencies,
    firstSentAt: result.firstSentAt,
    lastDoneAt: result.lastDoneAt,
    ...extra,
  })
}

async function sustain(startAt: number, periodMs: number, rounds: number, total: number): Promise<void> {
  const result = tally()
  /** How late the timers fired: a sign that this process, not the node, was the bottleneck. */
  let maxTimerLagMs = 0
  await Promise.all(
    stations.map(async (station) => {
      const offset = (station.id / total) * periodMs
      for (let round = 0; round < rounds; round++) {
        const due = startAt + offset + round * periodMs
        const wait = due - Date.now()
        if (wait > 0) await Bun.sleep(wait)
        maxTimerLagMs = Math.max(maxTimerLagMs, Date.now() - due)
        await timedCall(station, result)
      }
    }),
  )
  report('sustained', result, { maxTimerLagMs })
}

async function burst(): Promise<void> {
  const result = tally()
  const started = performance.now()
  const calls = stations.map((station) => timedCall(station, result))
  const issueMs = performance.now() - started
  await Promise.all(calls)
  report('burst', result, { issueMs: ms(issueMs) })
}

async function close(): Promise<void> {
  closing = true
  const all = Promise.allSettled(stations.map((station) => station.client.close({ code: 1000 })))
  const timeout = Bun.sleep(CLOSE_TIMEOUT_MS).then(() => 'timeout' as const)
  if ((await Promise.race([all, timeout])) === 'timeout') {
    await Promise.allSettled(stations.map((station) => station.client.close({ force: true })))
  }
  emit({ ev: 'closed', stations: stations.length })
}

async function handle(command: Command): Promise<void> {
  switch (command.cmd) {
    case 'open':
      return open(command.ids)
    case 'sustain':
      return sustain(command.startAt, command.periodMs, command.rounds, command.total)
    case 'burst':
      return burst()
    case 'close':
      await close()
      process.exit(0)
  }
}

const lines = createInterface({ input: process.stdin })
lines.on('line', (line) => {
  if (line.trim() === '') return
  let command: Command
  try {
    command = JSON.parse(line) as Command
  } catch {
    emit({ ev: 'error', message: `not JSON: ${line.slice(0, 200)}` })
    return
  }
  handle(command).catch((error: Error) => emit({ ev: 'error', message: error.stack ?? error.message }))
})
// The suite went away: do not outlive it.
lines.on('close', () => {
  if (!closing) void close().finally(() => process.exit(0))
})
emit({ ev: 'ready', pid: process.pid, samplesPerMessage: METER_SAMPLES })
