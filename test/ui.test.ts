/**
 * `oe-node ui` end to end: the COMPILED binary in a real 80×24 pseudo-terminal (tmux) against
 * two running nodes — the peer's org, an active agreement with a live non-zero rate, and a
 * proposal accepted with the keyboard after its grants are shown in plain words.
 */
import { spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { readdir, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, beforeAll, describe, expect, test } from 'vitest'
import { describeGrant, parseGrantSpec } from '../federation/index.ts'
import { api, peer, propose, waitAgreementState } from './helpers/federation.ts'
import { cleanupAll, ROOT, type RunningNode, startNode } from './helpers/node-process.ts'
import { meterRecord } from './helpers/transfer.ts'

const DEFAULT_BINARY = join(ROOT, 'dist', 'oe-node')
/** The binary under test; OE_NODE_TEST_BINARY points at another build. */
const BINARY = process.env.OE_NODE_TEST_BINARY ?? DEFAULT_BINARY
const HAS_TMUX = spawnSync('tmux', ['-V']).status === 0
if (!HAS_TMUX) {
  console.warn(
    'test/ui.test.ts: SKIPPED — tmux is not installed (apt-get install tmux); it provides the real terminal this test drives',
  )
}

const SIZE = { columns: 80, rows: 24 }
const ACTIVE_GRANT = 'telemetry:kinds=meter;quantities=power'
const PENDING_GRANT = 'telemetry:kinds=evse;quantities=power,energy_import;minInterval=60s'

/** Newest modification time of the sources that go into the binary. */
async function newestSource(dir: string): Promise<number> {
  let newest = 0
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) newest = Math.max(newest, await newestSource(path))
    else if (/\.tsx?$/.test(entry.name) && !/\.test\.tsx?$/.test(entry.name))
      newest = Math.max(newest, (await stat(path)).mtimeMs)
  }
  return newest
}

/**
 * Build dist/oe-node when it is missing (never over one that exists: other suites and benchmarks
 * may be running it); warn when it is older than its sources.
 */
async function ensureBinary(): Promise<void> {
  if (BINARY === DEFAULT_BINARY && !existsSync(BINARY)) {
    const build = spawnSync(process.execPath, [join(ROOT, 'scripts', 'build.ts')], {
      cwd: ROOT,
      encoding: 'utf8',
    })
    if (build.status !== 0) throw new Error(`bun scripts/build.ts failed:\n${build.stdout}${build.stderr}`)
  } else {
    if (!existsSync(BINARY)) throw new Error(`${BINARY} does not exist`)
    const sources = await Promise.all(
      ['cli', 'node', 'federation', 'data-plane', 'plugins'].map((dir) => newestSource(join(ROOT, dir))),
    )
    if ((await stat(BINARY)).mtimeMs < Math.max(...sources))
      console.warn(
        `test/ui.test.ts: ${BINARY} is older than the sources; run bun scripts/build.ts to test them`,
      )
  }
  // commander answers `--help` for an unknown command with the program's help, so look at what it printed.
  const help = spawnSync(BINARY, ['ui', '--help'], { encoding: 'utf8' })
  if (help.status !== 0 || !help.stdout.includes('Usage: oe-node ui')) {
    throw new Error(
      `${BINARY} has no working 'ui' command (exit ${help.status}): register it in cli/program.ts ` +
        `(registerUi from cli/commands/ui.ts) and rebuild with bun scripts/build.ts.\n${help.stderr}`,
    )
  }
}

/** A detached tmux session on its own server socket, so a user's tmux is never touched. */
class Terminal {
  private constructor(private readonly socket: string) {}

  static open(command: string[]): Terminal {
    const socket = `oe-ui-test-${process.pid}-${Math.random().toString(36).slice(2, 8)}`
    const terminal = new Terminal(socket)
    const quoted = command.map((part) => `'${part.replaceAll("'", `'\\''`)}'`).join(' ')
    // CI must not reach the UI (it would print a snapshot instead); the shell keeps the pane
    // open after the UI exits, so its exit code (or a crash) stays on screen.
    const script = `env -u CI -u CONTINUOUS_INTEGRATION -u OE_NODE_DATA_DIR ${quoted}; echo "[ui exited $?]"; sleep 600`
    terminal.tmux(
      'new-session',
      '-d',
      '-x',
      String(SIZE.columns),
      '-y',
      String(SIZE.rows),
      '-s',
      'ui',
      script,
    )
    return terminal
  }

  private tmux(...args: string[]): string {
    const env = { ...process.env }
    delete env.TMUX
    const result = spawnSync('tmux', ['-L', this.socket, '-f', '/dev/null', '-u', ...args], {
      encoding: 'utf8',
      env,
    })
    if (result.status !== 0) throw new Error(`tmux ${args[0]} failed: ${result.stderr}`)
    return result.stdout
  }

  screen(): string {
    return this.tmux('capture-pane', '-p', '-t', 'ui')
  }

  keys(...keys: string[]): void {
    this.tmux('send-keys', '-t', 'ui', ...keys)
  }

  /** Poll the screen until `check` passes; on timeout the error shows the last screen. */
  async waitFor(check: (screen: string) => boolean, what: string, timeoutMs = 15_000): Promise<string> {
    const deadline = Date.now() + timeoutMs
    let screen = ''
    while (Date.now() < deadline) {
      screen = this.screen()
      if (check(screen)) return screen
      await Bun.sleep(100)
    }
    throw new Error(`timed out waiting for ${what}; the screen was:\n${screen}`)
  }

  close(): void {
    try {
      this.tmux('kill-server')
    } catch {
      // Already gone.
    }
  }
}

/** Screen text with runs of whitespace made one space, so wrapped sentences can be searched. */
const flat = (screen: string): string => screen.replace(/\s+/g, ' ')

/** The records/s in the `in/s` column of an agreement's row, if the row is on screen. */
function inRate(screen: string, shortId: string): number | undefined {
  const row = new RegExp(
    `${shortId}\\s+chargeco\\s+consumer\\s+active\\s+\\d+[dhms](?: \\d+[dhms])?\\s+(\\S+)`,
  )
  const match = row.exec(screen)
  if (!match) return undefined
  const text = match[1]!
  const value = Number.parseFloat(text)
  return text.endsWith('k') ? value * 1000 : text.endsWith('M') ? value * 1_000_000 : value
}

let feeding = false
let feeder: Promise<void> | undefined
const terminals: Terminal[] = []

afterEach(async () => {
  feeding = false
  await feeder
  for (const terminal of terminals.splice(0)) terminal.close()
  await cleanupAll()
})

describe.skipIf(!HAS_TMUX)('oe-node ui in a real 80×24 terminal', () => {
  beforeAll(ensureBinary, 180_000)

  test('shows the peer, a live agreement rate, and accepts a proposal from the keyboard', async () => {
    const [gridco, chargeco] = await Promise.all([
      startNode({ config: 'org = "Gridco"\n' }),
      startNode({ config: 'org = "Chargeco"\n' }),
    ])
    await peer(gridco, 'chargeco', chargeco, 'gridco')

    // Active: Gridco asked for Chargeco's meter power; Chargeco signed.
    const activeId = await propose(gridco, 'chargeco', { grants: [ACTIVE_GRANT] })
    await waitAgreementState(chargeco, activeId, 'proposed')
    await api(chargeco, 'POST', `/v1/agreements/${activeId}/accept`)
    await waitAgreementState(gridco, activeId, 'active')

    // Pending: Chargeco offers its EVSE readings; it awaits Gridco's signature.
    const pendingId = await propose(chargeco, 'gridco', { offer: true, grants: [PENDING_GRANT] })
    await waitAgreementState(gridco, pendingId, 'proposed')

    feeding = true
    feeder = feed(chargeco)

    const terminal = Terminal.open([BINARY, '--data-dir', gridco.dataDir, 'ui'])
    terminals.push(terminal)
    const active = activeId.slice(0, 8)
    const pending = pendingId.slice(0, 8)

    const dashboard = await terminal.waitFor(
      (screen) => (inRate(screen, active) ?? 0) > 0 && screen.includes('Chargeco'),
      'the active agreement with a non-zero rate and the peer org',
      20_000,
    )
    expect(dashboard).toContain('Gridco') // the header: this node's org
    expect(dashboard).toMatch(/NATS ● connected/)
    expect(dashboard).toMatch(/chargeco\s+Chargeco\s+up/) // the peers pane: alias, org, state
    expect(dashboard).toMatch(new RegExp(`${pending}\\s+chargeco\\s+awaits you`))
    assertFits(dashboard)

    // Tab to the pending pane, Enter to review: the grant in plain words.
    terminal.keys('Tab')
    await terminal.waitFor((screen) => screen.includes('▶ Pending proposals'), 'focus on pending proposals')
    terminal.keys('Enter')
    const words = describeGrant(parseGrantSpec(PENDING_GRANT), 'Chargeco', 'Gridco')
    const review = await terminal.waitFor(
      (screen) => flat(screen).includes(flat(words)),
      'the review screen with the grant in plain words',
    )
    expect(review).toContain(`Review proposal ${pending} from chargeco (Chargeco)`)
    expect(review).toMatch(/a accept & sign/)
    assertFits(review)

    terminal.keys('a')
    await terminal.waitFor(
      (screen) => new RegExp(`${pending}\\s+chargeco\\s+consumer\\s+active`).test(screen),
      'the accepted proposal as an active agreement on screen',
    )
    await waitAgreementState(gridco, pendingId, 'active')
    await waitAgreementState(chargeco, pendingId, 'active')

    // The node goes away: the UI says so and keeps retrying; q still quits cleanly.
    await gridco.stop()
    await terminal.waitFor(
      (screen) => screen.includes('node unreachable — retrying'),
      'the unreachable banner',
    )
    terminal.keys('q')
    await terminal.waitFor((screen) => screen.includes('[ui exited 0]'), 'the UI to quit with exit code 0')
  })
})

/** The whole UI is on screen: had it drawn more than 24 lines or wider ones, the header would have scrolled away. */
function assertFits(screen: string): void {
  const lines = screen.replace(/\n+$/, '').split('\n')
  expect(lines.length).toBeLessThanOrEqual(SIZE.rows)
  expect(lines[0]).toMatch(/^ oe-node {2}Gridco /)
  expect(lines.at(-1)).toMatch(/q quit/)
}

/** Chargeco ingests meter power readings until the test ends: data flows to Gridco. */
async function feed(node: RunningNode): Promise<void> {
  let next = 0
  while (feeding) {
    const batch = Array.from({ length: 50 }, () => meterRecord(next++))
    await node
      .fetch('/v1/telemetry', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(batch),
      })
      .then((response) => response.text())
      .catch(() => undefined)
    await Bun.sleep(100)
  }
}
