import type { Command } from 'commander'
import { resolveDataDir } from '../../node/index.ts'
import { UsageError } from '../errors.ts'
import type { GlobalOptions } from '../output.ts'

export function registerUi(program: Command): void {
  program
    .command('ui')
    .description(
      'terminal dashboard of the running node: peers, agreements with live rates, proposals to review and sign, plugins, audit events',
    )
    .option('--interval <seconds>', 'how often to ask the node for news', '1')
    .addHelpText(
      'after',
      `
Keys: tab/←→ pane · ↑↓ select · enter review · a accept · r reject · x revoke (y/n) · ? help · q quit.
When stdout is not a terminal (or CI is set) it prints one snapshot instead; --json prints it as JSON.

Examples:
  oe-node ui
  oe-node ui --data-dir /srv/oe-node
  oe-node ui --json | jq '.rates'`,
    )
    .action(async (options: { interval: string }, command: Command) => {
      const globals = command.optsWithGlobals<GlobalOptions>()
      const seconds = Number(options.interval)
      if (!(Number.isFinite(seconds) && seconds >= 0.2 && seconds <= 3600))
        throw new UsageError('--interval takes a number of seconds from 0.2 to 3600')
      // Loaded on demand: the other commands do not pay for react and ink.
      const { runUi } = await import('../ui/run.tsx')
      await runUi({
        dataDir: resolveDataDir(globals.dataDir),
        intervalMs: seconds * 1000,
        json: globals.json,
      })
    })
}
