/**
 * What the demo prints: plain objects first (`start`, `tick`, `summary`), then either NDJSON
 * (`--json`) or a few plain lines for people. The `summary` is the last line of `--json` output.
 */
import type { ControlCounts } from './observer.ts'
import type { OcppVersion } from './stations.ts'

export interface DemoStart {
  type: 'start'
  /** The temp data dirs, one per organisation (removed at the end unless --keep). */
  dirs: string[]
  orgs: { org: string; dataDir: string }[]
}

export interface DemoReady {
  type: 'ready'
  orgs: { org: string; api: string; dataDir: string }[]
  agreements: { id: string; label: string; provider: string; consumer: string; grants: string[] }[]
  stations: { id: string; version: OcppVersion }[]
}

export interface AgreementRecords {
  id: string
  provider: string
  consumer: string
  /** Records the consumer received under the agreement. */
  records: number
}

export interface ChargerRow {
  rid: string
  version: OcppVersion
  /** What the station reports drawing now. */
  powerW: number
  /** The last reading Gridco received for it. */
  seenByGridcoW: number | null
  limitW: number | null
}

export interface DemoTick {
  type: 'tick'
  elapsedS: number
  agreements: (AgreementRecords & { label: string })[]
  controls: ControlCounts
  chargers: ChargerRow[]
}

export interface DemoSummary {
  type: 'summary'
  agreements: AgreementRecords[]
  controls: ControlCounts
  /** Standing-data messages Gridco received with a field no grant allowed (0 when projection holds). */
  projectionViolations: number
}

export interface DemoNotice {
  type: 'control' | 'kept' | 'stopping' | 'warning'
  message: string
  [field: string]: unknown
}

export type DemoLine = DemoStart | DemoReady | DemoTick | DemoSummary | DemoNotice

const kw = (watts: number): string => `${(watts / 1000).toFixed(1)} kW`

/** Plain lines for people. */
export function plainLines(line: DemoLine): string[] {
  switch (line.type) {
    case 'start':
      return [`oe-node demo: starting ${line.orgs.map((org) => org.org).join(', ')}`]
    case 'ready':
      return [
        'the federation is up (Ctrl-C stops it):',
        ...line.orgs.map((org) => `  ${org.org.padEnd(9)} api ${org.api}  data ${org.dataDir}`),
        ...line.agreements.map(
          (agreement) =>
            `  ${`${agreement.provider} → ${agreement.consumer}`.padEnd(20)} ${agreement.label.padEnd(10)} ${agreement.grants.join(' + ')}`,
        ),
        `  stations  ${line.stations.map((station) => `${station.id} (${station.version})`).join(', ')}`,
      ]
    case 'tick': {
      const stamp = `[${String(line.elapsedS).padStart(4)}s]`
      const pad = ' '.repeat(stamp.length)
      return [
        ...line.agreements.map(
          (agreement, index) =>
            `${index === 0 ? stamp : pad} ${`${agreement.provider} → ${agreement.consumer}`.padEnd(20)} ${agreement.label.padEnd(10)} ${String(agreement.records).padStart(7)} records`,
        ),
        `${pad} chargers  ${line.chargers
          .map(
            (charger) =>
              `${charger.rid} ${kw(charger.powerW)}${charger.limitW === null ? '' : ` (limit ${kw(charger.limitW)})`}`,
          )
          .join(' · ')}`,
        `${pad} controls  sent ${line.controls.sent}, acknowledged ${line.controls.acknowledged}`,
      ]
    }
    case 'summary':
      return [
        'summary:',
        ...line.agreements.map(
          (agreement) =>
            `  ${agreement.id.slice(0, 12)}  ${`${agreement.provider} → ${agreement.consumer}`.padEnd(20)} ${agreement.records} records received`,
        ),
        `  controls sent ${line.controls.sent}, acknowledged ${line.controls.acknowledged}`,
        `  projection ${line.projectionViolations === 0 ? 'held' : `violated ${line.projectionViolations} times`}`,
      ]
    default:
      return [line.message]
  }
}

/**
 * Prints demo lines: NDJSON with `--json`, else plain text. While the terminal UI owns the
 * screen (`quiet`), plain lines wait and are printed when it is done.
 */
export class DemoPrinter {
  private quietValue = false
  private readonly deferred: string[] = []

  constructor(readonly json: boolean) {}

  set quiet(value: boolean) {
    this.quietValue = value
    if (!value) {
      for (const text of this.deferred.splice(0)) process.stdout.write(text)
    }
  }

  emit(line: DemoLine): void {
    if (this.json) {
      process.stdout.write(`${JSON.stringify(line)}\n`)
      return
    }
    const text = `${plainLines(line).join('\n')}\n`
    if (!this.quietValue) process.stdout.write(text)
    // Ticks are stale by the time the UI closes; notices are worth reading.
    else if (line.type !== 'tick') this.deferred.push(text)
  }
}
