import type { Command } from 'commander'
import { type AgreementDetail, type AgreementSummary, describeGrant } from '../../federation/index.ts'
import { UsageError } from '../errors.ts'
import { clientFor, collect, readTextInput } from '../input.ts'
import { type GlobalOptions, printLines, report } from '../output.ts'

const client = (command: Command) => clientFor(command.optsWithGlobals<GlobalOptions>())

function isoTime(value: string, flag: string): string {
  const ms = Date.parse(value)
  if (Number.isNaN(ms))
    throw new UsageError(`${flag} takes an ISO 8601 time (e.g. 2027-01-01T00:00:00Z), got '${value}'`)
  return new Date(ms).toISOString()
}

function summaryLine(a: AgreementSummary): string {
  const pending = a.awaitingUs ? '  ← awaits your accept/reject' : ''
  return `${a.id.slice(0, 12)}  ${a.state.padEnd(9)} ${a.role.padEnd(8)} ${a.peer.padEnd(14)} until ${a.validUntil}${pending}`
}

/** Agreement ids may be given in full or as a unique prefix (as `list` prints them). */
async function resolveId(command: Command, given: string): Promise<string> {
  if (/^[0-9a-f]{64}$/.test(given)) return given
  if (!/^[0-9a-f]{4,63}$/.test(given)) throw new UsageError(`'${given}' is not an agreement id`)
  const list = await (await client(command)).getJson<AgreementSummary[]>('/v1/agreements')
  const matches = list.filter((a) => a.id.startsWith(given))
  if (matches.length === 1) return matches[0]!.id
  throw new UsageError(
    matches.length === 0 ? `no agreement starts with ${given}` : `${given} matches several agreements`,
  )
}

export function registerAgreement(program: Command): void {
  const agreement = program
    .command('agreement')
    .description('sharing agreements with peers: propose, review, sign, end')

  agreement
    .command('propose')
    .requiredOption('--peer <alias>', 'the peer the agreement is with')
    .requiredOption(
      '--grant <spec>',
      'what is shared, repeatable: <data>:<key>=<v>[,<v>…][;<key>=…]',
      collect,
      [],
    )
    .requiredOption('--purpose <text>', 'why the data is shared (the peer reads this before signing)')
    .requiredOption('--valid-until <iso8601>', 'when the agreement ends')
    .option('--valid-from <iso8601>', 'when it starts (default: now)')
    .option('--offer', 'offer our data to the peer (we are the provider); default: ask for the peer’s data')
    .option('--max-records-per-sec <n>', 'rate limit on the data flow')
    .description('propose an agreement; it is signed by this node and sent to the peer to countersign')
    .addHelpText(
      'after',
      `
Grant spec: data is telemetry|standing|events|control; keys kinds rids sites quantities attrs
types commands minInterval. Examples:
  oe-node agreement propose --peer chargeco --purpose "network planning" --valid-until 2027-06-30T00:00:00Z \\
    --grant 'telemetry:kinds=evse;quantities=power,energy_import;minInterval=60s'
  oe-node agreement propose --peer gridco --offer --purpose "site data" --valid-until 2027-01-01T00:00:00Z \\
    --grant 'standing:kinds=station,evse;attrs=vendor,model,maxPowerW' --json`,
    )
    .action(async (options: Record<string, string | string[] | boolean | undefined>, command: Command) => {
      const globals = command.optsWithGlobals<GlobalOptions>()
      const rate = options.maxRecordsPerSec === undefined ? undefined : Number(options.maxRecordsPerSec)
      if (rate !== undefined && !(Number.isInteger(rate) && rate > 0))
        throw new UsageError('--max-records-per-sec takes a whole number above 0')
      const body = {
        peer: options.peer,
        grants: options.grant,
        purpose: options.purpose,
        validUntil: isoTime(String(options.validUntil), '--valid-until'),
        ...(options.validFrom ? { validFrom: isoTime(String(options.validFrom), '--valid-from') } : {}),
        offer: options.offer === true,
        ...(rate ? { maxRecordsPerSec: rate } : {}),
      }
      const response = await (await client(command)).request('POST', '/v1/agreements', {
        body: JSON.stringify(body),
        contentType: 'application/json',
      })
      const result = (await response.json()) as { id: string; state: string }
      report(globals, result, (r) => [
        `proposed ${r.id} (${r.state}); ${String(options.peer)} now reviews it`,
      ])
    })

  agreement
    .command('list')
    .description('agreements with their state, our role and the peer')
    .addHelpText('after', '\nExamples:\n  oe-node agreement list\n  oe-node agreement list --json')
    .action(async (_options: unknown, command: Command) => {
      const globals = command.optsWithGlobals<GlobalOptions>()
      const list = await (await client(command)).getJson<AgreementSummary[]>('/v1/agreements')
      report(globals, list, (items) => (items.length === 0 ? ['no agreements yet'] : items.map(summaryLine)))
    })

  agreement
    .command('show')
    .argument('<id>', 'agreement id (or a unique prefix)')
    .description('one agreement in full, with its grants in plain words')
    .action(async (given: string, _options: unknown, command: Command) => {
      const globals = command.optsWithGlobals<GlobalOptions>()
      const id = await resolveId(command, given)
      const detail = await (await client(command)).getJson<AgreementDetail>(`/v1/agreements/${id}`)
      report(globals, detail, (a) => [
        `agreement ${a.id}`,
        `  state       ${a.state}${a.awaitingUs ? ' (awaits your accept or reject)' : ''}`,
        `  provider    ${a.provider}${a.role === 'provider' ? ' (this node)' : ''}`,
        `  consumer    ${a.consumer}${a.role === 'consumer' ? ' (this node)' : ''}`,
        `  peer        ${a.peer}`,
        `  purpose     ${a.purpose}`,
        `  valid       ${a.validFrom} → ${a.validUntil}`,
        `  signed by   ${(['provider', 'consumer'] as const).filter((r) => a.signatures[r]).join(', ') || 'nobody'}`,
        ...(a.body.limits?.maxRecordsPerSec
          ? [`  rate limit  ${a.body.limits.maxRecordsPerSec} records/s`]
          : []),
        '  grants:',
        ...a.grants.map((grant) => `    - ${describeGrant(grant, a.provider, a.consumer)}`),
        ...(a.revocation
          ? [`  revoked ${new Date(a.revocation.at).toISOString()}: ${a.revocation.reason || '(no reason)'}`]
          : []),
        ...(a.rejection
          ? [`  rejected ${new Date(a.rejection.at).toISOString()}: ${a.rejection.reason || '(no reason)'}`]
          : []),
        ...(a.outbox.pending
          ? [
              `  ${a.outbox.pending} message(s) to ${a.peer} not yet delivered${a.outbox.lastError ? `: ${a.outbox.lastError}` : ''}`,
            ]
          : []),
      ])
    })

  for (const action of ['accept', 'reject', 'revoke'] as const) {
    const sub = agreement.command(action).argument('<id>', 'agreement id (or a unique prefix)').description(
      {
        accept: 'countersign a proposal from a peer: the agreement becomes active on both nodes',
        reject: 'decline a proposal (or withdraw your own)',
        revoke: 'end an agreement now, on both nodes',
      }[action],
    )
    if (action !== 'accept') sub.option('--reason <text>', 'why (sent to the peer and kept in the audit log)')
    sub.action(async (given: string, options: { reason?: string }, command: Command) => {
      const globals = command.optsWithGlobals<GlobalOptions>()
      const id = await resolveId(command, given)
      const response = await (await client(command)).request('POST', `/v1/agreements/${id}/${action}`, {
        body: JSON.stringify(options.reason ? { reason: options.reason } : {}),
        contentType: 'application/json',
      })
      const result = (await response.json()) as { id: string; state: string }
      report(globals, result, (r) => [`${r.id}: ${r.state}`])
    })
  }

  agreement
    .command('export')
    .argument('<id>', 'agreement id (or a unique prefix)')
    .description('print the agreement as text to send by mail (the partner runs agreement import)')
    .action(async (given: string, _options: unknown, command: Command) => {
      const globals = command.optsWithGlobals<GlobalOptions>()
      const id = await resolveId(command, given)
      const text = await (await (await client(command)).request('GET', `/v1/agreements/${id}/export`)).text()
      if (globals.json) report(globals, { id, text }, () => [])
      else printLines([text.trimEnd()])
    })

  agreement
    .command('import')
    .argument('[file]', 'file with the exported text; - or nothing reads stdin', '-')
    .description(
      'take an agreement exported by a peer; it is checked as strictly as one received over the network',
    )
    .action(async (file: string, _options: unknown, command: Command) => {
      const globals = command.optsWithGlobals<GlobalOptions>()
      const response = await (await client(command)).request('POST', '/v1/agreements/import', {
        body: await readTextInput(file),
        contentType: 'text/plain',
      })
      const result = (await response.json()) as { id: string; state: string; created: boolean }
      report(globals, result, (r) => [`${r.created ? 'imported' : 'updated'} ${r.id}: ${r.state}`])
    })
}
