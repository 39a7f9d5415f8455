/** The `oe-node` command line: global options and one registered command per file. */
import { Command, CommanderError, Option } from 'commander'
import { NODE_VERSION } from '../node/index.ts'
import { registerAgreement } from './commands/agreement.ts'
import { registerAudit } from './commands/audit.ts'
import { registerCard } from './commands/card.ts'
import { registerDemo } from './commands/demo.ts'
import { registerIngest } from './commands/ingest.ts'
import { registerInit } from './commands/init.ts'
import { registerKey } from './commands/key.ts'
import { registerOcpi } from './commands/ocpi.ts'
import { registerOcpp } from './commands/ocpp.ts'
import { registerPeers } from './commands/peers.ts'
import { registerStart } from './commands/start.ts'
import { registerStatus } from './commands/status.ts'
import { registerTail } from './commands/tail.ts'
import { registerToken } from './commands/token.ts'
import { registerUi } from './commands/ui.ts'
import { EXIT, exitCodeFor } from './errors.ts'
import { type GlobalOptions, printError } from './output.ts'

export function createProgram(): Command {
  const program = new Command('oe-node')
    .description(
      'openElectric node: share electricity-sector data between organisations under signed agreements',
    )
    .version(NODE_VERSION)
    .option('--data-dir <dir>', 'data dir (default $OE_NODE_DATA_DIR, else ~/.local/share/oe-node)')
    .option('--json', 'machine-readable output: one JSON document, or NDJSON for streams')
    .addOption(
      new Option('--log-level <level>', 'log level').choices([
        'trace',
        'debug',
        'info',
        'warn',
        'error',
        'fatal',
        'silent',
      ]),
    )
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride()
  registerInit(program)
  registerStart(program)
  registerStatus(program)
  registerCard(program)
  registerIngest(program)
  registerTail(program)
  registerPeers(program)
  registerAgreement(program)
  registerAudit(program)
  registerOcpp(program)
  registerOcpi(program)
  registerDemo(program)
  registerUi(program)
  registerToken(program)
  registerKey(program)
  const override = (command: Command): void => {
    command.exitOverride()
    for (const sub of command.commands) override(sub)
  }
  override(program)
  return program
}

/** Run the CLI and return its exit code. */
export async function runCli(argv: readonly string[]): Promise<number> {
  const program = createProgram()
  try {
    await program.parseAsync([...argv], { from: 'user' })
    return EXIT.ok
  } catch (error) {
    if (error instanceof CommanderError) {
      if (
        error.code === 'commander.helpDisplayed' ||
        error.code === 'commander.version' ||
        error.code === 'commander.help'
      ) {
        return EXIT.ok
      }
      return EXIT.usage
    }
    printError(program.opts<GlobalOptions>(), error)
    return exitCodeFor(error)
  }
}
