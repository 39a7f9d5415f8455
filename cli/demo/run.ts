/**
 * `oe-node demo` end to end: three organisations on one host, each an `oe-node start` child of
 * this executable with its own temp data dir and embedded NATS; peered, with agreements proposed
 * by the consumer and accepted by the provider; OCPP stations run here; then Gridco's terminal UI
 * (or a periodic summary) until Ctrl-C, SIGTERM, the UI's exit or `--duration`; then everything
 * stops in reverse order and the temp dirs go (unless `--keep`).
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { rmSync } from 'node:fs'
import { mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { DemoError } from './errors.ts'
import { connectTo, DemoObserver } from './observer.ts'
import { DemoNode, freePort, removeDirs, selfCommand } from './org-node.ts'
import { type ChargerRow, DemoPrinter, type DemoSummary } from './report.ts'
import {
  type AgreementPlan,
  type DemoAgreement,
  establishAgreement,
  grantedAttrs,
  peerNodes,
  recordsReceived,
} from './setup.ts'
import { DEMO_STATIONS, type DemoStation, startStations } from './stations.ts'

export interface DemoOptions {
  /** Print a periodic summary instead of opening the terminal UI. */
  headless: boolean
  /** NDJSON output (implies headless). */
  json: boolean
  /** Stop by itself this many seconds after the federation is up. */
  durationS?: number
  /** Leave the temp data dirs in place. */
  keep: boolean
  /** Fixed ports: libp2p N…N+2, OCPP N+3, APIs N+4…N+6 (default: free ports). */
  basePort?: number
  /** Whether this build has the `ui` command. */
  hasUi: boolean
}

const TICK_MS = 5_000
/** When the headless demo has Gridco limit a charger, after the federation is up. */
const CONTROL_AFTER_MS = 10_000
const CONTROL_LIMIT_W = 7_400
const CONTROL_VALID_MS = 15 * 60_000

/** The grants of the demo (ARCHITECTURE §6, as `--grant` specs). */
export const DEMO_GRANTS = {
  sunfleetTelemetry: 'telemetry:kinds=pv,battery;quantities=power,soc;minInterval=5s',
  sunfleetStanding: 'standing:kinds=pv,battery;attrs=ratedPowerW,capacityWh',
  chargecoTelemetry: 'telemetry:kinds=evse;quantities=power',
  chargecoStanding: 'standing:kinds=station,evse;attrs=vendor,model,ocppVersion,station,evse',
  chargecoControl: 'control:kinds=evse;commands=limit_power;min=0;max=22000',
} as const

/** Sleep until `ms` passed or `signal` aborts (no rejection). */
function pause(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve()
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer)
      signal.removeEventListener('abort', done)
      resolve()
    }
    const timer = setTimeout(done, ms)
    signal.addEventListener('abort', done, { once: true })
  })
}

/** Run the demo until it is stopped; throws (after cleaning up) when it could not be set up. */
export async function runDemo(options: DemoOptions): Promise<void> {
  const printer = new DemoPrinter(options.json)
  const stop = new AbortController()
  const command = selfCommand()
  const nodes: DemoNode[] = []
  const dirs: string[] = []
  let stations: DemoStation[] = []
  let agreements: DemoAgreement[] = []
  let ui: ChildProcess | undefined
  const lastRecords = new Map<string, number>()
  let plans: AgreementPlan[] = []
  const observer = new DemoObserver(() => grantedAttrs(plans))
  const warn = (message: string): void => printer.emit({ type: 'warning', message })

  // First signal: stop in order. Second: end everything now.
  let signals = 0
  const onSignal = (signal: NodeJS.Signals): void => {
    signals += 1
    if (signals === 1) {
      stop.abort(new DemoError(`stopped by ${signal}`))
      return
    }
    // Synchronously, so that nothing of the orderly stop runs on after this.
    for (const node of nodes) node.kill()
    ui?.kill('SIGKILL')
    if (!options.keep) {
      for (const dir of dirs) rmSync(dir, { recursive: true, force: true, maxRetries: 5 })
    }
    process.exit(130)
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)

  let failure: unknown
  try {
    for (const org of ['gridco', 'sunfleet', 'chargeco']) {
      dirs.push(await mkdtemp(join(tmpdir(), `oe-demo-${org}-`)))
    }
    const [gridcoDir, sunfleetDir, chargecoDir] = dirs as [string, string, string]
    const orgs = [
      { org: 'Gridco', dataDir: gridcoDir },
      { org: 'Sunfleet', dataDir: sunfleetDir },
      { org: 'ChargeCo', dataDir: chargecoDir },
    ]
    printer.emit({ type: 'start', dirs: [...dirs], orgs })

    const base = options.basePort
    const port = async (offset: number): Promise<number> => (base === undefined ? freePort() : base + offset)
    const ocppPort = await port(3)
    const configs = demoConfigs(ocppPort)
    for (const [index, { org, dataDir }] of orgs.entries()) {
      nodes.push(
        new DemoNode({
          org,
          dataDir,
          config: configs[index]!,
          listen: `/ip4/127.0.0.1/tcp/${await port(index)}`,
          api: `127.0.0.1:${base === undefined ? 0 : base + 4 + index}`,
          command,
        }),
      )
    }
    const [gridco, sunfleet, chargeco] = nodes as [DemoNode, DemoNode, DemoNode]
    await Promise.all(nodes.map((node) => node.start({ signal: stop.signal })))
    stop.signal.throwIfAborted()

    observer.watchConsumer(await connectTo(gridco))
    observer.watchProvider(await connectTo(chargeco))

    await Promise.all([
      peerNodes(gridco, 'sunfleet', sunfleet, 'gridco', { signal: stop.signal }),
      peerNodes(gridco, 'chargeco', chargeco, 'gridco', { signal: stop.signal }),
    ])
    stations = await startStations(`ws://127.0.0.1:${ocppPort}/ocpp`, DEMO_STATIONS, warn)
    stop.signal.throwIfAborted()

    plans = demoPlans(gridco, sunfleet, chargeco)
    agreements = await Promise.all(plans.map((plan) => establishAgreement(plan, { signal: stop.signal })))
    printer.emit({
      type: 'ready',
      orgs: nodes.map((node) => ({ org: node.org, api: node.client.baseUrl, dataDir: node.dataDir })),
      agreements: agreements.map(({ id, label, provider, consumer, grants }) => ({
        id,
        label,
        provider,
        consumer,
        grants,
      })),
      stations: stations.map((station) => ({ id: station.spec.id, version: station.spec.version })),
    })

    if (options.durationS !== undefined) {
      const timer = setTimeout(
        () => stop.abort(new DemoError(`--duration ${options.durationS} s elapsed`)),
        options.durationS * 1000,
      )
      stop.signal.addEventListener('abort', () => clearTimeout(timer), { once: true })
    }

    const interactive = !options.headless && !options.json && process.stdout.isTTY && process.stdin.isTTY
    if (interactive && options.hasUi) {
      printer.quiet = true
      ui = spawn(command[0]!, [...command.slice(1), '--data-dir', gridco.dataDir, 'ui'], { stdio: 'inherit' })
      const child = ui
      const exited = new Promise<void>((resolve) => {
        child.once('exit', () => resolve())
        child.once('error', (error) => {
          warn(`the terminal UI did not start: ${error.message}`)
          resolve()
        })
      })
      stop.signal.addEventListener('abort', () => child.kill('SIGTERM'), { once: true })
      await exited
      printer.quiet = false
    } else {
      if (!options.headless && !options.json && !options.hasUi) {
        warn('this build has no terminal UI (oe-node ui): printing a summary every 5 s instead')
      }
      await headless(printer, observer, agreements, stations, lastRecords, stop.signal, warn)
    }
  } catch (error) {
    if (!stop.signal.aborted) failure = error
  }
  // Ends whatever still waits on it (a node still starting, the --duration timer).
  if (!stop.signal.aborted) stop.abort(new DemoError('the demo is stopping'))

  // Stop in reverse: what the consumer received first (the nodes still answer), then stations,
  // our NATS clients, the nodes, the temp dirs.
  const summary: DemoSummary = {
    type: 'summary',
    agreements: await Promise.all(
      agreements.map(async (agreement) => ({
        id: agreement.id,
        provider: agreement.provider,
        consumer: agreement.consumer,
        records: (await recordsReceived(agreement)) ?? lastRecords.get(agreement.id) ?? 0,
      })),
    ),
    controls: observer.controls(),
    projectionViolations: observer.projection().violations,
  }
  if (!options.json) printer.emit({ type: 'stopping', message: 'stopping…' })
  await Promise.all(stations.map((station) => station.stop()))
  await observer.close()
  if (ui && ui.exitCode === null && ui.signalCode === null) {
    ui.kill('SIGTERM')
    await new Promise((resolve) => ui?.once('exit', resolve))
  }
  const codes = await Promise.all(nodes.map((node) => node.stop()))
  // After a failed start the cause is reported below; how the others ended adds nothing.
  for (const [index, code] of codes.entries()) {
    if (code !== 0 && !failure) warn(`${nodes[index]!.org}'s node exited with code ${code}`)
  }
  if (options.keep) {
    printer.emit({
      type: 'kept',
      message: `data dirs kept:\n${nodes.map((node) => `  ${node.org.padEnd(9)} ${node.dataDir}`).join('\n')}`,
      dirs: [...dirs],
    })
  } else {
    await removeDirs(dirs)
  }
  printer.emit(summary)
  process.off('SIGINT', onSignal)
  process.off('SIGTERM', onSignal)
  if (failure) throw failure
}

/** The agreements: the consumer (Gridco) asks, the provider accepts. */
function demoPlans(gridco: DemoNode, sunfleet: DemoNode, chargeco: DemoNode): AgreementPlan[] {
  return [
    {
      label: 'telemetry',
      provider: sunfleet,
      consumer: gridco,
      providerAlias: 'sunfleet',
      grants: [DEMO_GRANTS.sunfleetTelemetry],
      purpose: 'Network visibility of PV and battery output (5 s resolution)',
    },
    {
      label: 'standing',
      provider: sunfleet,
      consumer: gridco,
      providerAlias: 'sunfleet',
      grants: [DEMO_GRANTS.sunfleetStanding],
      purpose: 'Network planning: ratings of connected PV and batteries',
    },
    {
      label: 'chargers',
      provider: chargeco,
      consumer: gridco,
      providerAlias: 'chargeco',
      grants: [DEMO_GRANTS.chargecoTelemetry, DEMO_GRANTS.chargecoStanding, DEMO_GRANTS.chargecoControl],
      purpose: 'Charger load visibility and flexible connection: network may cap charging power',
    },
  ]
}

/** config.toml of each organisation's node. */
function demoConfigs(ocppPort: number): [string, string, string] {
  // Shorter than the demo's 10 s before SIGKILL, so a node always gets to stop by itself.
  const common = 'shutdown_timeout = "8s"\n'
  return [
    `org = "Gridco"\n${common}`,
    `org = "Sunfleet"\n${common}\n[plugins.simulator]\nenabled = true\nsites = 3\ninterval = "1s"\nseed = 1\n`,
    `org = "ChargeCo"\n${common}\n[plugins.ocpp]\nenabled = true\nlisten = "127.0.0.1:${ocppPort}"\nauto_accept = true\n`,
  ]
}

/** A summary every 5 s; Gridco limits one charger after 10 s. */
async function headless(
  printer: DemoPrinter,
  observer: DemoObserver,
  agreements: readonly DemoAgreement[],
  stations: readonly DemoStation[],
  lastRecords: Map<string, number>,
  signal: AbortSignal,
  warn: (message: string) => void,
): Promise<void> {
  const started = Date.now()
  const target = stations[0]
  const chargers = agreements.find((agreement) =>
    agreement.grants.some((grant) => grant.startsWith('control:')),
  )
  let controlSent = false
  let nextTick = started + TICK_MS
  while (!signal.aborted) {
    const now = Date.now()
    const controlAt = started + CONTROL_AFTER_MS
    const wakeAt = !controlSent && target && chargers ? Math.min(nextTick, controlAt) : nextTick
    await pause(Math.max(0, wakeAt - now), signal)
    if (signal.aborted) break
    if (!controlSent && target && chargers && Date.now() >= controlAt) {
      controlSent = true
      try {
        await observer.sendLimit(
          chargers.providerAlias,
          'evse',
          target.rid,
          CONTROL_LIMIT_W,
          CONTROL_VALID_MS,
        )
        printer.emit({
          type: 'control',
          message: `${chargers.consumer} limits ${target.rid} (${chargers.provider}) to ${CONTROL_LIMIT_W / 1000} kW`,
          rid: target.rid,
          v: CONTROL_LIMIT_W,
        })
      } catch (error) {
        warn(`limit_power not sent: ${(error as Error).message}`)
      }
    }
    if (Date.now() >= nextTick) {
      nextTick += TICK_MS
      const rows = await Promise.all(
        agreements.map(async (agreement) => {
          const records = (await recordsReceived(agreement)) ?? lastRecords.get(agreement.id) ?? 0
          lastRecords.set(agreement.id, records)
          return {
            id: agreement.id,
            label: agreement.label,
            provider: agreement.provider,
            consumer: agreement.consumer,
            records,
          }
        }),
      )
      const chargerRows: ChargerRow[] = stations.map((station) => {
        const view = station.view()
        return {
          rid: view.rid,
          version: view.version,
          powerW: view.powerW,
          seenByGridcoW: observer.powerSeen(view.rid) ?? null,
          limitW: view.limitW,
        }
      })
      if (signal.aborted) break
      printer.emit({
        type: 'tick',
        elapsedS: Math.round((Date.now() - started) / 1000),
        agreements: rows,
        controls: observer.controls(),
        chargers: chargerRows,
      })
    }
  }
}
