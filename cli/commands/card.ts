import type { Command } from 'commander'
import {
  advertisedAddrs,
  createCard,
  dataDirPaths,
  loadConfig,
  loadIdentity,
  type NodeCard,
  NodeClient,
  NodeNotRunningError,
  resolveDataDir,
} from '../../node/index.ts'
import { type GlobalOptions, printJson, printLines } from '../output.ts'

export function registerCard(program: Command): void {
  program
    .command('card')
    .description("print this node's card: one line to give a partner organisation so it can peer with you")
    .addHelpText('after', '\nExamples:\n  oe-node card > gridco.card\n  oe-node card --json')
    .action(async (_options: unknown, command: Command) => {
      const globals = command.optsWithGlobals<GlobalOptions>()
      const dataDir = resolveDataDir(globals.dataDir)
      let result: { card: NodeCard; text: string }
      try {
        // A running node knows its real addresses.
        result = await (await NodeClient.fromDataDir(dataDir)).getJson('/v1/card')
      } catch (error) {
        if (!(error instanceof NodeNotRunningError)) throw error
        const paths = dataDirPaths(dataDir)
        const config = await loadConfig({ file: paths.config })
        const identity = await loadIdentity(paths.key).catch(() => {
          throw new NodeNotRunningError(`${dataDir} has no identity yet: run oe-node init first`)
        })
        result = createCard(identity, config.org ?? '', advertisedAddrs(config.federation.listen))
      }
      if (globals.json) printJson(result.card)
      else printLines([result.text])
    })
}
