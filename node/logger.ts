/**
 * Structured logs with pino: JSON to stderr by default, human-readable when `log.format =
 * "pretty"`. pino-pretty runs as a plain stream (pino.transport() breaks in the compiled binary).
 * Secrets are redacted by key name wherever they appear.
 */
import pino, { type Logger as PinoLogger } from 'pino'
import pretty from 'pino-pretty'

export type Logger = PinoLogger

export interface LoggerInit {
  level: string
  format: 'json' | 'pretty'
  /** Defaults to stderr, so stdout stays for what commands print. */
  destination?: NodeJS.WritableStream
}

const REDACT = [
  'password',
  'token',
  'secret',
  'authorization',
  '*.password',
  '*.token',
  '*.secret',
  '*.authorization',
  'headers.authorization',
]

export function createLogger(init: LoggerInit): Logger {
  const options = {
    level: init.level,
    base: { pid: process.pid },
    redact: { paths: REDACT, censor: '[redacted]' },
  }
  if (init.format === 'pretty') {
    return pino(
      options,
      pretty({ colorize: Boolean(process.stderr.isTTY), destination: 2, sync: true, ignore: 'pid,hostname' }),
    )
  }
  return pino(options, init.destination ?? pino.destination({ dest: 2, sync: false }))
}

/** A logger that drops everything, for tests and for commands that do not log. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' })
}
