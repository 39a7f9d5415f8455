import type { Command } from 'commander'
import { UsageError } from '../errors.ts'
import { clientFor } from '../input.ts'
import { type GlobalOptions, report } from '../output.ts'

/** A partner as `ocpi partners --json` lists it. */
interface PartnerRow {
  id: string
  name: string
  state: string
  initiator: string | null
  version: string | null
  roles: { role: string; country_code: string; party_id: string; name: string }[]
  modules: string[]
  versions_url: string | null
  registered_at: number | null
  last_contact: number | null
}

async function runAction<T>(command: Command, name: string, input: Record<string, unknown>): Promise<T> {
  const globals = command.optsWithGlobals<GlobalOptions>()
  const client = await clientFor(globals)
  const response = await client.request('POST', `/v1/plugins/ocpi/actions/${name}`, {
    body: JSON.stringify(input),
    contentType: 'application/json',
  })
  return ((await response.json()) as { result: T }).result
}

const when = (ms: number | null): string => (ms === null ? 'never' : new Date(ms).toISOString())

function partnerLines(partner: PartnerRow): string[] {
  const roles = partner.roles.map((role) => `${role.role} ${role.country_code}/${role.party_id}`).join(', ')
  return [
    `${partner.id.padEnd(20)} ${partner.state.padEnd(10)} ${roles || '(no roles yet)'}`,
    `  modules: ${partner.modules.join(' ') || '-'}`,
    `  last contact: ${when(partner.last_contact)}${partner.versions_url ? `   versions: ${partner.versions_url}` : ''}`,
  ]
}

export function registerOcpi(program: Command): void {
  const ocpi = program
    .command('ocpi')
    .description('OCPI 2.2.1 roaming with charge point operators and e-mobility providers (plugin ocpi)')

  const token = ocpi
    .command('token')
    .description('credentials tokens for partners to register with this node')
  token
    .command('create')
    .description(
      'issue a registration token (CREDENTIALS_TOKEN_A) for a partner; give it with our versions URL',
    )
    .requiredOption('--name <partner>', 'the partner (becomes its local id)')
    .addHelpText('after', '\nExample:\n  oe-node ocpi token create --name greenmsp')
    .action(async (options: { name: string }, command: Command) => {
      const result = await runAction<{ partner: string; token: string; versions_url: string }>(
        command,
        'token_create',
        { name: options.name },
      )
      report(command.optsWithGlobals<GlobalOptions>(), result, (value) => [
        `partner:      ${value.partner}`,
        `token:        ${value.token}`,
        `versions URL: ${value.versions_url}`,
        'Give both to the partner; it registers with them (the token works once, for registration).',
      ])
    })

  ocpi
    .command('register <versions-url>')
    .description(
      "register this node with a partner's platform (version negotiation and credentials exchange)",
    )
    .requiredOption('--token <token>', 'the registration token (A) the partner issued')
    .option('--name <partner>', 'local id for the partner (default: from the URL)')
    .addHelpText(
      'after',
      '\nExample:\n  oe-node ocpi register https://cpo.example.com/ocpi/versions --token ebf3b399-779f --name examplecpo',
    )
    .action(async (url: string, options: { token: string; name?: string }, command: Command) => {
      const result = await runAction<PartnerRow>(command, 'register', {
        url,
        token: options.token,
        ...(options.name ? { name: options.name } : {}),
      })
      report(command.optsWithGlobals<GlobalOptions>(), result, (partner) => [
        `registered with ${partner.id}`,
        ...partnerLines(partner),
      ])
    })

  ocpi
    .command('partners')
    .description('OCPI partners: state, roles, modules, last contact')
    .addHelpText('after', '\nExamples:\n  oe-node ocpi partners\n  oe-node ocpi partners --json')
    .action(async (_options: unknown, command: Command) => {
      const result = await runAction<{ versions_url: string; partners: PartnerRow[] }>(
        command,
        'partners',
        {},
      )
      report(command.optsWithGlobals<GlobalOptions>(), result, (value) => [
        `our versions URL: ${value.versions_url}`,
        ...(value.partners.length === 0 ? ['no partners'] : value.partners.flatMap(partnerLines)),
      ])
    })

  ocpi
    .command('update <partner>')
    .description('renew the credentials tokens with a registered partner (PUT credentials)')
    .action(async (partner: string, _options: unknown, command: Command) => {
      const result = await runAction<PartnerRow>(command, 'update', { partner })
      report(command.optsWithGlobals<GlobalOptions>(), result, (value) => [
        `updated ${value.id}`,
        ...partnerLines(value),
      ])
    })

  ocpi
    .command('unregister <partner>')
    .description('unregister from a partner (DELETE credentials) and forget it')
    .action(async (partner: string, _options: unknown, command: Command) => {
      const result = await runAction<{ partner: string; remote: string }>(command, 'unregister', { partner })
      report(command.optsWithGlobals<GlobalOptions>(), result, (value) => [
        `${value.partner}: forgotten here; at the partner: ${value.remote}`,
      ])
    })

  ocpi
    .command('pull [partner]')
    .description(
      'eMSP: pull locations, tariffs, sessions and CDRs from CPO partners now (resumes a cut pull)',
    )
    .option('--module <module>', 'only this module: locations, tariffs, sessions or cdrs')
    .action(async (partner: string | undefined, options: { module?: string }, command: Command) => {
      const result = await runAction<{ pulled: Record<string, Record<string, Record<string, unknown>>> }>(
        command,
        'pull',
        { ...(partner ? { partner } : {}), ...(options.module ? { module: options.module } : {}) },
      )
      report(command.optsWithGlobals<GlobalOptions>(), result, (value) =>
        Object.entries(value.pulled).flatMap(([id, modules]) => [
          id,
          ...Object.entries(modules).map(
            ([module, outcome]) =>
              `  ${module.padEnd(10)} ${outcome.complete ? 'complete' : 'incomplete'} received=${String(outcome.received ?? 0)}${outcome.error ? ` error: ${String(outcome.error)}` : ''}`,
          ),
        ]),
      )
    })

  ocpi
    .command('command <evse> <command>')
    .description(
      'eMSP: send a command to the CPO of an EVSE learnt over OCPI (start_session, stop_session, unlock_connector, reserve_now, cancel_reservation, limit_power)',
    )
    .option('--token <uid>', 'the driver token (start_session, reserve_now)')
    .option('--connector <id>', 'the connector id')
    .option('--reservation <id>', 'the reservation id (reserve_now, cancel_reservation)')
    .option('--session <id>', 'the session id (stop_session; default: the active one)')
    .option('--watts <w>', 'the limit in W (limit_power)')
    .addHelpText('after', '\nExample:\n  oe-node ocpi command NL_CPO_CS1-1 start_session --token 047A1B2C3D')
    .action(
      async (
        evse: string,
        name: string,
        options: {
          token?: string
          connector?: string
          reservation?: string
          session?: string
          watts?: string
        },
        command: Command,
      ) => {
        const input: Record<string, unknown> = { evse, command: name }
        if (options.token) input.token = options.token
        if (options.connector) input.connector = options.connector
        if (options.reservation) input.reservation = options.reservation
        if (options.session) input.session = options.session
        if (options.watts !== undefined) {
          const watts = Number(options.watts)
          if (!Number.isFinite(watts) || watts < 0)
            throw new UsageError('--watts must be a non-negative number')
          input.v = watts
          input.u = 'W'
        }
        const result = await runAction<Record<string, unknown>>(command, 'send_command', input)
        report(command.optsWithGlobals<GlobalOptions>(), result, (value) => [
          `${String(value.command)} on ${String(value.evse)}: ${String(value.result)}${value.reason ? ` (${String(value.reason)})` : ''}`,
          `request ${String(value.request)}: the result follows as a control_result event on oe.evt.evse.${String(value.evse)}.control_result`,
        ])
      },
    )
}
