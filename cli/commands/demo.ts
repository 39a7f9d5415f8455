import type { Command } from 'commander'
import { runDemo } from '../demo/run.ts'
import { UsageError } from '../errors.ts'
import type { GlobalOptions } from '../output.ts'

interface DemoCommandOptions {
  headless?: boolean
  duration?: string
  keep?: boolean
  basePort?: string
}

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description(
      'run a small federation on this host: Gridco (network), Sunfleet (PV and batteries), ChargeCo (OCPP chargers)',
    )
    .option('--headless', 'print a summary every 5 s instead of opening the terminal UI')
    .option('--duration <seconds>', 'stop by itself this many seconds after the federation is up')
    .option('--keep', 'keep the temp data dirs (and say where they are)')
    .option('--base-port <n>', 'fixed ports: libp2p n…n+2, OCPP n+3, APIs n+4…n+6 (default: free ports)')
    .addHelpText(
      'after',
      '\nWith --json (implies --headless) it prints NDJSON: {"type":"start",…}, {"type":"tick",…} every 5 s,\nand last {"type":"summary","agreements":[{id,provider,consumer,records}],"controls":{sent,acknowledged}}.\n\nExamples:\n  oe-node demo\n  oe-node demo --headless --duration 60\n  oe-node --json demo --duration 40',
    )
    .action(async (options: DemoCommandOptions, command: Command) => {
      const globals = command.optsWithGlobals<GlobalOptions>()
      const duration = options.duration === undefined ? undefined : Number(options.duration)
      if (duration !== undefined && !(Number.isFinite(duration) && duration > 0))
        throw new UsageError('--duration takes a number of seconds above 0')
      const basePort = options.basePort === undefined ? undefined : Number(options.basePort)
      if (basePort !== undefined && !(Number.isInteger(basePort) && basePort >= 1024 && basePort <= 65_529))
        throw new UsageError('--base-port takes a port from 1024 to 65529 (it uses seven ports from there)')
      // The lead registers `ui` separately; without it the demo prints its summary instead.
      const root = command.parent ?? command
      const hasUi = root.commands.some((candidate) => candidate.name() === 'ui')
      await runDemo({
        headless: options.headless === true || globals.json === true,
        json: globals.json === true,
        ...(duration !== undefined ? { durationS: duration } : {}),
        keep: options.keep === true,
        ...(basePort !== undefined ? { basePort } : {}),
        hasUi,
      })
    })
}
