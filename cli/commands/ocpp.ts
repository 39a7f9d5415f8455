import { type Command, Option } from 'commander'
import { UsageError } from '../errors.ts'
import { clientFor, collect } from '../input.ts'
import { type GlobalOptions, report } from '../output.ts'

/** What an OCPP action answers: the station's response to the call the node made. */
interface StationAnswer {
  station: string
  version: string
  action: string
  response: Record<string, unknown>
}

interface StationRow {
  id: string
  configured: boolean
  connected: boolean
  online?: boolean
  version?: string
  remote?: string
  lastSeen?: number
}

interface StationOptions {
  station: string
  connector?: string
}

async function runAction<T>(command: Command, name: string, input: Record<string, unknown>): Promise<T> {
  const globals = command.optsWithGlobals<GlobalOptions>()
  const client = await clientFor(globals)
  const response = await client.request('POST', `/v1/plugins/ocpp/actions/${name}`, {
    body: JSON.stringify(input),
    contentType: 'application/json',
  })
  return ((await response.json()) as { result: T }).result
}

function connectorOf(options: StationOptions): number | undefined {
  if (options.connector === undefined) return undefined
  const connector = Number(options.connector)
  if (!Number.isSafeInteger(connector) || connector < 0)
    throw new UsageError(`--connector must be a non-negative integer, got '${options.connector}'`)
  return connector
}

function answerLines(answer: StationAnswer): string[] {
  const { status, ...rest } = answer.response
  const head = `${answer.station} (${answer.version}) ${answer.action}${typeof status === 'string' ? `: ${status}` : ''}`
  return Object.keys(rest).length === 0 ? [head] : [head, JSON.stringify(rest, null, 2)]
}

/** One subcommand per operator action of the ocpp plugin (`POST /v1/plugins/ocpp/actions/<name>`). */
function stationCommand(
  parent: Command,
  name: string,
  description: string,
  example: string,
  build: (command: Command) => Command,
  input: (options: StationOptions & Record<string, unknown>) => Record<string, unknown>,
): void {
  const action = name.replaceAll('-', '_')
  const command = parent
    .command(name)
    .description(description)
    .requiredOption('--station <id>', 'the station id (as in ws://…/ocpp/<id>)')
    .option('--connector <n>', 'connector (OCPP 1.6) or EVSE (OCPP 2.0.1) number')
    .addHelpText('after', `\nExample:\n  ${example}`)
  if (action !== name) command.alias(action)
  build(command).action(async (options: StationOptions & Record<string, unknown>, self: Command) => {
    const answer = await runAction<StationAnswer>(self, action, {
      station: options.station,
      ...input(options),
    })
    report(self.optsWithGlobals<GlobalOptions>(), answer, answerLines)
  })
}

export function registerOcpp(program: Command): void {
  const ocpp = program
    .command('ocpp')
    .description('operate the charging stations connected to the running node (plugin ocpp)')

  ocpp
    .command('stations')
    .description('configured and connected stations, with their OCPP version and last contact')
    .addHelpText('after', '\nExamples:\n  oe-node ocpp stations\n  oe-node ocpp stations --json')
    .action(async (_options: unknown, command: Command) => {
      const result = await runAction<{ stations: StationRow[] }>(command, 'stations', {})
      report(command.optsWithGlobals<GlobalOptions>(), result, ({ stations }) =>
        stations.length === 0
          ? ['no stations configured or connected']
          : stations.map(
              (s) =>
                `${s.id.padEnd(24)} ${(s.connected ? (s.online === false ? 'silent' : 'connected') : 'offline').padEnd(10)} ${(s.version ?? '').padEnd(10)} ${s.configured ? 'configured' : 'auto-accepted'}${s.remote ? `  ${s.remote}` : ''}`,
            ),
      )
    })

  stationCommand(
    ocpp,
    'reset',
    'reset a station (soft: when idle; hard: at once)',
    'oe-node ocpp reset --station CS1 --type hard',
    (command) =>
      command.addOption(
        new Option('--type <type>', 'soft or hard').choices(['soft', 'hard']).default('soft'),
      ),
    (options) => ({ type: options.type, connector: connectorOf(options) }),
  )

  stationCommand(
    ocpp,
    'remote-start',
    'ask a station to start a session',
    'oe-node ocpp remote-start --station CS1 --connector 1 --id-tag FLEET-42',
    (command) => command.option('--id-tag <tag>', 'the token the session is started for', 'oe-node'),
    (options) => ({ connector: connectorOf(options), id_tag: options.idTag }),
  )

  stationCommand(
    ocpp,
    'remote-stop',
    'ask a station to stop a session (by transaction id, or the open session on --connector)',
    'oe-node ocpp remote-stop --station CS1 --connector 1',
    (command) => command.option('--transaction <id>', 'the transaction id'),
    (options) => {
      if (options.transaction === undefined && options.connector === undefined)
        throw new UsageError('give --transaction or --connector')
      return { transaction: options.transaction, connector: connectorOf(options) }
    },
  )

  stationCommand(
    ocpp,
    'trigger-message',
    'ask a station to send a message now (e.g. StatusNotification, MeterValues, BootNotification)',
    'oe-node ocpp trigger-message --station CS1 --message MeterValues --connector 1',
    (command) => command.requiredOption('--message <name>', 'the message to trigger'),
    (options) => ({ message: options.message, connector: connectorOf(options) }),
  )

  stationCommand(
    ocpp,
    'get-configuration',
    'read configuration keys of an OCPP 1.6 station (all when no --key)',
    'oe-node ocpp get-configuration --station CS1 --key HeartbeatInterval',
    (command) => command.option('--key <key>', 'a configuration key (repeatable)', collect),
    (options) => ({ keys: options.key }),
  )

  stationCommand(
    ocpp,
    'get-variables',
    'read device-model variables of an OCPP 2.0.1 station',
    'oe-node ocpp get-variables --station CS2 --variable OCPPCommCtrlr.HeartbeatInterval',
    (command) =>
      command.requiredOption('--variable <Component.Variable>', 'a variable (repeatable)', collect),
    (options) => ({ variables: options.variable }),
  )

  stationCommand(
    ocpp,
    'change-configuration',
    'set a configuration key of an OCPP 1.6 station',
    'oe-node ocpp change-configuration --station CS1 --key HeartbeatInterval --value 120',
    (command) =>
      command
        .requiredOption('--key <key>', 'the configuration key')
        .requiredOption('--value <value>', 'its new value'),
    (options) => ({ key: options.key, value: options.value }),
  )

  stationCommand(
    ocpp,
    'set-variables',
    'set a device-model variable of an OCPP 2.0.1 station',
    'oe-node ocpp set-variables --station CS2 --component OCPPCommCtrlr --variable HeartbeatInterval --value 120',
    (command) =>
      command
        .requiredOption('--component <name>', 'the component')
        .requiredOption('--variable <name>', 'the variable')
        .requiredOption('--value <value>', 'its new value'),
    (options) => ({ component: options.component, variable: options.variable, value: options.value }),
  )

  stationCommand(
    ocpp,
    'clear-charging-profile',
    'remove charging profiles (all, or one --profile, or those on --connector)',
    'oe-node ocpp clear-charging-profile --station CS1 --connector 1',
    (command) => command.option('--profile <id>', 'the charging profile id'),
    (options) => ({ profile: options.profile, connector: connectorOf(options) }),
  )
}
