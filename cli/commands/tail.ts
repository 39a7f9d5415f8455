import type { Command } from 'commander'
import { CommandFailedError, UsageError } from '../errors.ts'
import { clientFor } from '../input.ts'
import type { GlobalOptions } from '../output.ts'

interface TailOptions {
  fromStart?: boolean
  count?: string
  timeout?: string
}

export function registerTail(program: Command): void {
  program
    .command('tail')
    .argument('<subject>', "NATS subject, wildcards allowed (e.g. 'oe.tel.>')")
    .description('print messages on a subject as they arrive')
    .option('--from-start', 'first print what the JetStream stream already holds')
    .option('--count <n>', 'exit after n messages (exit 1 if the timeout comes first)')
    .option('--timeout <seconds>', 'stop after this many seconds')
    .addHelpText(
      'after',
      "\nExamples:\n  oe-node tail 'oe.tel.>'\n  oe-node tail 'oe.tel.meter.*.power' --from-start --count 100 --json",
    )
    .action(async (subject: string, options: TailOptions, command: Command) => {
      const globals = command.optsWithGlobals<GlobalOptions>()
      const count = options.count === undefined ? undefined : Number(options.count)
      if (count !== undefined && (!Number.isInteger(count) || count < 1))
        throw new UsageError('--count takes a whole number above 0')
      const timeout = options.timeout === undefined ? undefined : Number(options.timeout)
      if (timeout !== undefined && !(timeout > 0))
        throw new UsageError('--timeout takes a number of seconds above 0')
      const client = await clientFor(globals)

      const controller = new AbortController()
      const signals = [controller.signal, ...(timeout ? [AbortSignal.timeout(timeout * 1000)] : [])]
      const signal = AbortSignal.any(signals)
      const stopOnSignal = (): void => controller.abort()
      process.once('SIGINT', stopOnSignal)
      process.once('SIGTERM', stopOnSignal)
      const query = new URLSearchParams({ subject, ...(options.fromStart ? { from_start: '1' } : {}) })
      let seen = 0
      try {
        const response = await client.request('GET', `/v1/tail?${query}`, { signal })
        const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader()
        let buffered = ''
        while (count === undefined || seen < count) {
          const { value, done } = await reader.read()
          if (done) break
          buffered += value
          let newline = buffered.indexOf('\n')
          while (newline >= 0 && (count === undefined || seen < count)) {
            const line = buffered.slice(0, newline)
            buffered = buffered.slice(newline + 1)
            newline = buffered.indexOf('\n')
            if (line.trim() === '') continue
            const message = JSON.parse(line) as {
              subject?: string
              data?: unknown
              error?: string
              message?: string
            }
            if (message.error) throw new CommandFailedError(message.message ?? message.error)
            seen += 1
            if (globals.json) process.stdout.write(`${line}\n`)
            else process.stdout.write(`${message.subject}  ${JSON.stringify(message.data)}\n`)
          }
        }
        controller.abort()
      } catch (error) {
        const name = (error as Error).name
        if (name !== 'AbortError' && name !== 'TimeoutError') throw error
      } finally {
        process.off('SIGINT', stopOnSignal)
        process.off('SIGTERM', stopOnSignal)
      }
      if (count !== undefined && seen < count) {
        throw new CommandFailedError(`saw ${seen} of ${count} messages before the timeout`)
      }
    })
}
