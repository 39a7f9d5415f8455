import type { Command } from 'commander'
import type { IngestResult } from '../../node/index.ts'
import { CommandFailedError, UsageError } from '../errors.ts'
import { clientFor, readTextInput } from '../input.ts'
import { type GlobalOptions, report } from '../output.ts'

/** Records from a JSON array or NDJSON text; unparsable lines become errors at their index. */
export function splitRecords(text: string): { records: unknown[]; errors: IngestResult['errors'] } {
  const trimmed = text.trimStart()
  if (trimmed.startsWith('[')) {
    let parsed: unknown
    try {
      parsed = JSON.parse(trimmed)
    } catch (error) {
      throw new UsageError(`the input is not a JSON array: ${(error as Error).message}`)
    }
    return { records: parsed as unknown[], errors: [] }
  }
  const records: unknown[] = []
  const errors: IngestResult['errors'] = []
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue
    try {
      records.push(JSON.parse(line))
    } catch (error) {
      errors.push({ index: records.length + errors.length, reason: `not JSON: ${(error as Error).message}` })
      records.push(undefined)
    }
  }
  return { records, errors }
}

export function registerIngest(program: Command): void {
  program
    .command('ingest')
    .argument('[file]', 'NDJSON or JSON array of telemetry records; - or nothing reads stdin', '-')
    .description("post telemetry records to the running node's API")
    .option('--batch <n>', 'records per request', '1000')
    .addHelpText(
      'after',
      `\nExamples:\n  echo '{"kind":"meter","rid":"m1","q":"power","v":1200,"t":${Date.now()}}' | oe-node ingest\n  oe-node ingest readings.ndjson --json`,
    )
    .action(async (file: string, options: { batch: string }, command: Command) => {
      const globals = command.optsWithGlobals<GlobalOptions>()
      const batch = Number(options.batch)
      if (!Number.isInteger(batch) || batch < 1) throw new UsageError('--batch takes a whole number above 0')
      const client = await clientFor(globals)
      const { records, errors: parseErrors } = splitRecords(await readTextInput(file))
      const unparsable = new Set(parseErrors.map((error) => error.index))
      const total: IngestResult = { accepted: 0, rejected: parseErrors.length, errors: [...parseErrors] }
      for (let start = 0; start < records.length; start += batch) {
        const indices: number[] = []
        const chunk: unknown[] = []
        for (let i = start; i < Math.min(start + batch, records.length); i++) {
          if (unparsable.has(i)) continue
          indices.push(i)
          chunk.push(records[i])
        }
        if (chunk.length === 0) continue
        const response = await client.request('POST', '/v1/telemetry', {
          body: JSON.stringify(chunk),
          contentType: 'application/json',
        })
        const result = (await response.json()) as IngestResult
        total.accepted += result.accepted
        total.rejected += result.rejected
        for (const error of result.errors)
          total.errors.push({ index: indices[error.index] ?? error.index, reason: error.reason })
      }
      total.errors.sort((a, b) => a.index - b.index)
      report(globals, total, (value) => [
        `accepted ${value.accepted}, rejected ${value.rejected}`,
        ...value.errors.slice(0, 20).map((error) => `  record ${error.index}: ${error.reason}`),
        ...(value.errors.length > 20 ? [`  … and ${value.errors.length - 20} more`] : []),
      ])
      if (total.rejected > 0) throw new CommandFailedError(`${total.rejected} record(s) were rejected`)
    })
}
