import type { Command } from 'commander'
import {
  createLogger,
  dataDirPaths,
  defaultOrgName,
  initDataDir,
  loadConfig,
  OeNode,
  resolveDataDir,
} from '../../node/index.ts'
import { collect } from '../input.ts'
import { type GlobalOptions, printJson, printLines } from '../output.ts'

interface StartOptions {
  api?: string
  listen: string[]
  natsUrl?: string
  natsCreds?: string
  natsPort?: string
  config?: string
  logFormat?: string
}

export function registerStart(program: Command): void {
  program
    .command('start')
    .description('run the node in the foreground until Ctrl-C (creates the data dir on first run)')
    .option('--api <host:port>', 'HTTP API listen address (default 127.0.0.1:7410)')
    .option(
      '--listen <multiaddr>',
      'libp2p listen address, repeatable (default /ip4/0.0.0.0/tcp/7400)',
      collect,
      [],
    )
    .option('--nats-url <url>', 'use an existing NATS (nats://HOST:PORT) instead of the embedded nats-server')
    .option('--nats-creds <file>', 'NATS credentials file for --nats-url')
    .option('--nats-port <port>', 'client port of the embedded nats-server (default: a free port)')
    .option('--config <file>', 'config file (default <data-dir>/config.toml)')
    .option('--log-format <format>', 'json or pretty')
    .addHelpText(
      'after',
      '\nExamples:\n  oe-node start\n  oe-node --data-dir ./b start --api 127.0.0.1:7420 --listen /ip4/0.0.0.0/tcp/7401\n  oe-node start --nats-url nats://nats.internal:4222 --nats-creds /etc/oe-node/nats.creds',
    )
    .action(async (options: StartOptions, command: Command) => {
      const globals = command.optsWithGlobals<GlobalOptions>()
      const dataDir = resolveDataDir(globals.dataDir)
      const paths = dataDirPaths(dataDir)
      const flags = {
        'api.listen': options.api,
        'federation.listen': options.listen.length > 0 ? options.listen : undefined,
        'nats.url': options.natsUrl,
        'nats.creds': options.natsCreds,
        'nats.port': options.natsPort,
        'log.level': globals.logLevel,
        'log.format': options.logFormat,
      }
      // Validate before touching the data dir, so a bad config leaves nothing behind.
      let config = await loadConfig({
        file: options.config ?? paths.config,
        required: options.config !== undefined,
        flags,
      })
      const init = await initDataDir(paths, config.org ?? defaultOrgName())
      if (init.created.config && options.config === undefined) {
        config = await loadConfig({ file: paths.config, flags })
      }
      const logger = createLogger({ level: config.log.level, format: config.log.format })
      const node = new OeNode({ dataDir, config }, { logger })

      let stopping: Promise<void> | undefined
      const shutdown = (signal: string): void => {
        if (stopping) {
          logger.warn({ signal }, 'second signal: exiting now')
          node.kill()
          logger.flush()
          process.exit(1)
        }
        logger.info({ signal }, 'shutting down')
        const deadline = setTimeout(() => {
          logger.error({ timeoutMs: config.shutdown_timeout }, 'shutdown took too long: exiting')
          node.kill()
          logger.flush()
          process.exit(1)
        }, config.shutdown_timeout)
        stopping = node.stop().finally(() => {
          clearTimeout(deadline)
          logger.flush()
          process.exit(0)
        })
      }
      process.on('SIGINT', () => shutdown('SIGINT'))
      process.on('SIGTERM', () => shutdown('SIGTERM'))

      await node.start()
      const { text } = node.card()
      const ready = {
        type: 'ready',
        org: node.org,
        peerId: node.identity.peerId,
        card: text,
        api: node.apiUrl,
        dataDir,
        nats: node.natsUrl,
      }
      if (globals.json) printJson(ready)
      else {
        printLines([
          `oe-node ${ready.org} is running (Ctrl-C to stop)`,
          `  peer id   ${ready.peerId}`,
          `  card      ${ready.card}`,
          `  api       ${ready.api}`,
          `  nats      ${ready.nats}`,
          `  data dir  ${ready.dataDir}`,
        ])
      }
      // Stay up until a signal ends the process.
      await new Promise<never>(() => {})
    })
}
