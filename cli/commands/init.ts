import type { Command } from 'commander'
import {
  advertisedAddrs,
  createCard,
  dataDirPaths,
  initDataDir,
  loadConfig,
  resolveDataDir,
} from '../../node/index.ts'
import { type GlobalOptions, report } from '../output.ts'

export function registerInit(program: Command): void {
  program
    .command('init')
    .description(
      'create a data dir: identity key, config.toml and admin token (nothing existing is overwritten)',
    )
    .option('--org <name>', 'organisation name written to config.toml (default: this host name)')
    .addHelpText(
      'after',
      '\nExamples:\n  oe-node init --org "Gridco"\n  oe-node --data-dir ./gridco init --org Gridco --json',
    )
    .action(async (options: { org?: string }, command: Command) => {
      const globals = command.optsWithGlobals<GlobalOptions>()
      const dataDir = resolveDataDir(globals.dataDir)
      const paths = dataDirPaths(dataDir)
      const result = await initDataDir(paths, options.org)
      const config = await loadConfig({ file: paths.config })
      const org = config.org ?? options.org ?? ''
      const { text } = createCard(result.identity, org, advertisedAddrs(config.federation.listen))
      report(
        globals,
        { dataDir, org, peerId: result.identity.peerId, created: result.created, card: text },
        (value) => [
          value.created.key ? `initialised ${value.dataDir}` : `${value.dataDir} was already initialised`,
          `org      ${value.org}`,
          `peer id  ${value.peerId}`,
          `config   ${paths.config}${value.created.config ? '' : ' (kept)'}`,
          `card     ${value.card}`,
        ],
      )
    })
}
