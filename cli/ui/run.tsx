/**
 * Start `oe-node ui`: the live app in a terminal (on the alternate screen, so the shell's
 * scrollback stays as it was), or, when stdout is not a terminal or CI is set, one plain
 * snapshot with no cursor tricks (`--json`: the snapshot as JSON).
 */
import { render, renderToString } from 'ink'
import { printJson } from '../output.ts'
import { App } from './app.tsx'
import { Screen } from './components.tsx'
import { initialUiState } from './model.ts'
import { NodeApiSource } from './source.ts'
import { emptyView, nextView } from './use-node-data.ts'

export interface RunUiOptions {
  dataDir: string
  intervalMs: number
  json?: boolean
}

const ALTERNATE_SCREEN_ON = '\u001B[?1049h'
const ALTERNATE_SCREEN_OFF = '\u001B[?1049l'

export function isContinuousIntegration(env: NodeJS.ProcessEnv = process.env): boolean {
  return ['CI', 'CONTINUOUS_INTEGRATION'].some(
    (name) => env[name] !== undefined && env[name] !== '0' && env[name] !== 'false',
  )
}

export async function runUi(options: RunUiOptions): Promise<void> {
  const source = new NodeApiSource({ dataDir: options.dataDir })
  const interactive =
    !options.json &&
    process.stdout.isTTY === true &&
    process.stdin.isTTY === true &&
    !isContinuousIntegration()
  if (!interactive) {
    // Two samples one interval apart, so the snapshot has rates too.
    const first = await source.snapshot({ signal: AbortSignal.timeout(10_000) })
    await Bun.sleep(options.intervalMs)
    const second = await source.snapshot({ signal: AbortSignal.timeout(10_000) })
    const view = nextView(nextView(emptyView, first), second)
    if (options.json) {
      printJson({ ...second, rates: view.rates })
      return
    }
    const columns = process.stdout.columns || 80
    const state = {
      ...initialUiState,
      message: { text: 'snapshot: run oe-node ui in a terminal for the live view', tone: 'ok' as const },
    }
    process.stdout.write(
      `${renderToString(<Screen view={view} state={state} size={{ columns, rows: 10_000 }} />, { columns })}\n`,
    )
    return
  }

  process.stdout.write(ALTERNATE_SCREEN_ON)
  const instance = render(<App source={source} intervalMs={options.intervalMs} />, { exitOnCtrlC: true })
  const stop = (): void => instance.unmount()
  process.once('SIGTERM', stop)
  process.once('SIGHUP', stop)
  try {
    await instance.waitUntilExit()
  } finally {
    process.off('SIGTERM', stop)
    process.off('SIGHUP', stop)
    process.stdout.write(ALTERNATE_SCREEN_OFF)
  }
}
