/**
 * `oe-node demo --headless --json --duration 40` end to end: three node processes with their own
 * embedded NATS, OCPP stations, peering and agreements; data reaches Gridco under every
 * agreement, standing data arrives projected, Gridco's limit_power is acknowledged by ChargeCo's
 * node and the charger obeys; and when the demo ends no process and no temp dir is left.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { readdir, readFile, rm, stat } from 'node:fs/promises'
import { afterAll, expect, test } from 'vitest'
import { BUN, CLI } from './helpers/node-process.ts'

const DURATION_S = 40

interface Line {
  type: string
  [field: string]: unknown
}

interface Summary {
  type: 'summary'
  agreements: { id: string; provider: string; consumer: string; records: number }[]
  controls: { sent: number; acknowledged: number }
  projectionViolations: number
}

interface Tick {
  type: 'tick'
  chargers: { rid: string; powerW: number; seenByGridcoW: number | null; limitW: number | null }[]
}

let child: ChildProcess | undefined
let dirs: string[] = []

/** Pids whose command line names one of the demo's data dirs. */
async function processesUsing(paths: readonly string[]): Promise<{ pid: number; cmdline: string }[]> {
  const found: { pid: number; cmdline: string }[] = []
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    const cmdline = (await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '')).replaceAll('\0', ' ')
    if (paths.some((path) => cmdline.includes(path))) found.push({ pid: Number(entry), cmdline })
  }
  return found
}

const exists = (path: string): Promise<boolean> =>
  stat(path).then(
    () => true,
    () => false,
  )

afterAll(async () => {
  // Only if the test failed half-way: end what is left and remove the dirs.
  if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  for (const { pid } of await processesUsing(dirs)) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {
      // Gone.
    }
  }
  await Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true })))
})

test(
  'the headless demo moves data under every agreement, holds the projection, has a limit obeyed, and leaves nothing behind',
  async () => {
    const env: Record<string, string> = {}
    for (const [key, value] of Object.entries(process.env)) {
      if (
        value !== undefined &&
        !key.startsWith('OE_NODE_') &&
        !key.startsWith('VITEST') &&
        key !== 'NODE_ENV'
      )
        env[key] = value
    }
    const started = spawn(BUN, [CLI, 'demo', '--headless', '--json', '--duration', String(DURATION_S)], {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    child = started
    let stdout = ''
    let stderr = ''
    started.stdout!.on('data', (chunk) => {
      stdout += chunk
      // Learn the dirs as early as possible, for cleanup if the test fails.
      const first = stdout.split('\n')[0]
      if (dirs.length === 0 && first && stdout.includes('\n')) {
        const line = JSON.parse(first) as Line
        if (line.type === 'start') dirs = line.dirs as string[]
      }
    })
    started.stderr!.on('data', (chunk) => {
      stderr += chunk
    })
    const code = await new Promise<number>((resolve) => {
      const timer = setTimeout(() => started.kill('SIGTERM'), (DURATION_S + 40) * 1000)
      started.once('exit', (exitCode, signal) => {
        clearTimeout(timer)
        resolve(exitCode ?? (signal ? 128 : 1))
      })
    })
    const lines = stdout
      .split('\n')
      .filter((line) => line.trim() !== '')
      .map((line) => JSON.parse(line) as Line)
    expect(code, stderr.slice(-3000)).toBe(0)

    expect(lines[0]!.type).toBe('start')
    expect(dirs).toHaveLength(3)

    const summary = lines.at(-1) as unknown as Summary
    expect(summary.type).toBe('summary')
    expect(summary.agreements).toHaveLength(3)
    for (const agreement of summary.agreements) {
      expect(agreement).toMatchObject({ id: expect.stringMatching(/^[0-9a-f]{64}$/), consumer: 'Gridco' })
      expect(agreement.records, `${agreement.provider} → ${agreement.consumer}`).toBeGreaterThan(0)
    }
    expect(summary.agreements.map((agreement) => agreement.provider).sort()).toEqual([
      'ChargeCo',
      'Sunfleet',
      'Sunfleet',
    ])
    expect(summary.projectionViolations).toBe(0)
    expect(summary.controls.sent).toBeGreaterThanOrEqual(1)
    expect(summary.controls.acknowledged).toBeGreaterThanOrEqual(1)

    // The limited charger drew no more than the limit, and that is what Gridco saw.
    const control = lines.find((line) => line.type === 'control')!
    expect(control).toMatchObject({ rid: expect.any(String), v: 7400 })
    const ticks = lines.filter((line) => line.type === 'tick') as unknown as Tick[]
    expect(ticks.length).toBeGreaterThanOrEqual(Math.floor(DURATION_S / 5) - 1)
    const limited = ticks.at(-1)!.chargers.find((charger) => charger.rid === control.rid)!
    expect(limited.limitW).toBe(7400)
    expect(limited.powerW).toBeLessThanOrEqual(7400)
    expect(limited.seenByGridcoW).not.toBeNull()
    expect(limited.seenByGridcoW!).toBeLessThanOrEqual(7400)

    // Nothing left: no process from the demo's data dirs, no dirs.
    expect(await processesUsing(dirs)).toEqual([])
    for (const dir of dirs) expect(await exists(dir)).toBe(false)
  },
  (DURATION_S + 50) * 1000,
)
