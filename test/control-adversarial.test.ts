/**
 * A provider under attack by its consumer: a rogue peer with a valid key and real, co-signed
 * agreements opens `/oe/control/1.0.0` itself and sends commands outside its control grant,
 * beyond the grant's bounds, for sites the grant does not cover, with bad signatures, under
 * agreements that are not active or not its own, and frames that are not commands at all. The
 * provider refuses each with a reply naming the reason, audits it as `control.refused` (or
 * `protocol.bad_frame`), publishes nothing on `oe.ctl.>` and keeps serving. In every test one
 * valid command is published and found by the same read, so an empty read proves something.
 */
import { sign } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { encodeCbor } from '../data-plane/index.ts'
import { CONTROL_PROTOCOL, type ControlCommand, controlBytes } from '../federation/control.ts'
import {
  agreementId,
  base64url,
  encodeFrame,
  type Grant,
  newAgreementBody,
  signId,
} from '../federation/index.ts'
import type { NodeIdentity } from '../node/index.ts'
import { api, waitAgreementState } from './helpers/federation.ts'
import { cleanupAll, type RunningNode, readSubject, waitFor } from './helpers/node-process.ts'
import { newIdentity, type Rogue, startArena } from './helpers/rogue-peer.ts'

let victim: RunningNode
let honest: RunningNode
let rogue: Rogue
let target: string
let victimKey: string

const DAY = 86_400_000

/** Chargers the rogue may limit, within bounds. */
const LIMIT_CHARGERS: Grant = {
  data: 'control',
  kinds: ['evse'],
  rids: ['CP1-1', 'CP1-2'],
  commands: ['limit_power'],
  bounds: { limit_power: { min: 0, max: 22_000 } },
}
/** Stations it may connect or disconnect, at one site only. */
const CONNECT_NORTH: Grant = {
  data: 'control',
  kinds: ['station'],
  sites: ['depot-north'],
  commands: ['connect'],
}
/** Loads it may limit, any rid. */
const LIMIT_LOADS: Grant = { data: 'control', kinds: ['load'], commands: ['limit_load'] }

/** Agreement ids, by what they are. */
const ids = { active: '', revoked: '', expiring: '', proposed: '', foreign: '', reversed: '' }

const rogueParty = () => ({ org: 'Rogue', key: base64url(rogue.identity.publicKey) })
const victimParty = () => ({ org: 'Victim', key: victimKey })

/**
 * An agreement the rogue proposes over `/oe/agreement/1.0.0`, signed by it; the victim signs it
 * through its API unless `accept` is false. By default the victim provides and the rogue holds
 * the control grants.
 */
async function agreement(
  grants: Grant[],
  options: { accept?: boolean; validUntil?: number; rogueProvides?: boolean } = {},
): Promise<string> {
  const body = newAgreementBody({
    provider: options.rogueProvides ? rogueParty() : victimParty(),
    consumer: options.rogueProvides ? victimParty() : rogueParty(),
    purpose: 'control adversarial test',
    validFrom: Date.now() - 60_000,
    validUntil: options.validUntil ?? Date.now() + DAY,
    grants,
  })
  const id = agreementId(body)
  const role = options.rogueProvides ? 'provider' : 'consumer'
  const result = await rogue.exchange(
    target,
    encodeFrame({ t: 'propose', doc: { body, signatures: { [role]: signId(id, rogue.identity) } } }),
  )
  expect(result.reply).toEqual({ ok: true })
  if (options.accept ?? true) {
    await api(victim, 'POST', `/v1/agreements/${id}/accept`)
    await waitAgreementState(victim, id, 'active')
  } else {
    await waitAgreementState(victim, id, 'proposed')
  }
  return id
}

async function putResource(kind: string, rid: string, site: string): Promise<void> {
  await api(victim, 'PUT', `/v1/resources/${kind}/${rid}`, { site, name: `${kind} ${rid}` })
}

let tagCount = 0
/** A tag unique to one command, carried in its payload as `source`, to find it on `oe.ctl`. */
const newTag = (what: string): string => `${what}-${++tagCount}`

interface Sent {
  tag: string
  reply?: unknown
  reset: boolean
}

/**
 * Send one command as the rogue consumer: `{t: 'control', cmd, sig}` with the signature over
 * `controlBytes(cmd)` by `signer` (the rogue's own key unless given). `alter` changes the command
 * after it is signed.
 */
async function command(
  id: string,
  kind: string,
  rid: string,
  name: string,
  v: unknown,
  options: {
    tag?: string
    extra?: Record<string, unknown>
    signer?: NodeIdentity
    alter?: (cmd: ControlCommand) => ControlCommand
    /** When the command says it was issued (default now). */
    at?: number
  } = {},
): Promise<Sent> {
  const tag = options.tag ?? newTag(name)
  const payload = new Uint8Array(
    encodeCbor({ v, u: 'W', until: Date.now() + 3_600_000, source: tag, ...options.extra }),
  )
  const cmd: ControlCommand = { id, kind, rid, command: name, payload, at: options.at ?? Date.now() }
  const signer = options.signer ?? rogue.identity
  const sig = new Uint8Array(sign(null, controlBytes(cmd), signer.privateKeyObject))
  const sent = options.alter ? options.alter(cmd) : cmd
  const result = await rogue.exchange(target, encodeFrame({ t: 'control', cmd: sent, sig }), CONTROL_PROTOCOL)
  return { tag, ...result }
}

interface AuditLine {
  seq: number
  type: string
  data: Record<string, unknown>
}

/** The victim's audit log, read from its file. */
async function auditLog(): Promise<AuditLine[]> {
  const text = await readFile(join(victim.dataDir, 'audit', 'audit.log'), 'utf8')
  return text
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => JSON.parse(line) as AuditLine)
}

/**
 * The command was refused with `error` and a message matching `reason`, and the refusal is in
 * the victim's audit log as `control.refused` from the rogue, with the same reason.
 */
async function expectRefused(sent: Sent, error: string, reason: RegExp): Promise<void> {
  expect(sent.reply).toMatchObject({ ok: false, error, message: expect.stringMatching(reason) })
  const message = (sent.reply as { message: string }).message
  await waitFor(
    async () =>
      (await auditLog()).some(
        (entry) =>
          entry.type === 'control.refused' &&
          entry.data.peer === 'rogue' &&
          entry.data.error === error &&
          entry.data.reason === message,
      ),
    5_000,
    `control.refused '${message}' in the audit log`,
  )
}

/**
 * One valid command is published on the victim's `oe.ctl` (proving the read sees data) and none
 * of the refused ones is, read from OE_CTL from the start.
 */
async function expectPublishedOnly(valid: Sent, refused: Sent[]): Promise<void> {
  expect(valid.reply).toEqual({ ok: true })
  const messages = await readSubject(victim, 'oe.ctl.>', 500)
  const sources = messages.map((message) => message.data.source)
  expect(sources).toContain(valid.tag)
  for (const sent of refused) expect(sources).not.toContain(sent.tag)
}

/** A command the grant allows, under the active agreement. */
const validCommand = () => command(ids.active, 'evse', 'CP1-1', 'limit_power', 7_400)

beforeAll(async () => {
  ;({ victim, honest, rogue, target, victimKey } = await startArena())
  await Promise.all([
    putResource('station', 'N1', 'depot-north'),
    putResource('station', 'S1', 'depot-south'),
  ])
  // The one that must expire first, so its clock runs while the others are made.
  ids.expiring = await agreement([LIMIT_CHARGERS], { validUntil: Date.now() + 4_000 })
  ids.active = await agreement([LIMIT_CHARGERS, CONNECT_NORTH, LIMIT_LOADS])
  ids.revoked = await agreement([LIMIT_CHARGERS])
  await api(victim, 'POST', `/v1/agreements/${ids.revoked}/revoke`, { reason: 'test' })
  await waitAgreementState(victim, ids.revoked, 'revoked')
  ids.proposed = await agreement([LIMIT_CHARGERS], { accept: false })
  // The rogue provides, the victim controls: it gives the rogue no control of the victim.
  ids.reversed = await agreement([LIMIT_CHARGERS], { rogueProvides: true })
  // The victim and its honest peer: the honest peer holds the control grant, not the rogue.
  ids.foreign = (
    await api<{ id: string }>(honest, 'POST', '/v1/agreements', {
      peer: 'victim',
      purpose: 'honest control',
      validUntil: new Date(Date.now() + DAY).toISOString(),
      grants: ['control:kinds=evse;commands=limit_power;min=0;max=22000'],
    })
  ).id
  await waitAgreementState(victim, ids.foreign, 'proposed')
  await api(victim, 'POST', `/v1/agreements/${ids.foreign}/accept`)
  await waitAgreementState(victim, ids.foreign, 'active')
  await waitAgreementState(victim, ids.expiring, 'expired', 10_000)
}, 60_000)

afterAll(async () => {
  await rogue?.stop()
  await cleanupAll()
})

describe('commands outside the control grant', () => {
  test('another rid, another kind, another command: refused, audited, not published', async () => {
    const refused = [
      await command(ids.active, 'evse', 'CP9-1', 'limit_power', 7_400),
      await command(ids.active, 'meter', 'CP1-1', 'limit_power', 7_400),
      await command(ids.active, 'evse', 'CP1-1', 'connect', 0),
      await command(ids.active, 'evse', 'CP1-1', 'limit_import', 7_400),
    ]
    await expectRefused(refused[0]!, 'AgreementStateError', /no control grant for limit_power on evse CP9-1/)
    await expectRefused(refused[1]!, 'AgreementStateError', /no control grant for limit_power on meter CP1-1/)
    await expectRefused(refused[2]!, 'AgreementStateError', /no control grant for connect on evse CP1-1/)
    await expectRefused(refused[3]!, 'AgreementStateError', /no control grant for limit_import on evse CP1-1/)
    await expectPublishedOnly(await validCommand(), refused)
  })

  test('a rid that is not one subject token is refused before anything is published', async () => {
    // The load grant lists no rids: only the shape of the rid can stop `oe.ctl.load.a.b.limit_load`.
    const refused = [
      await command(ids.active, 'load', 'L1.extra', 'limit_load', 1_000),
      await command(ids.active, 'load', '*', 'limit_load', 1_000),
      await command(ids.active, 'load', '', 'limit_load', 1_000),
    ]
    for (const sent of refused) await expectRefused(sent, 'AgreementFormatError', /not a control command/)
    const valid = await command(ids.active, 'load', 'L1', 'limit_load', 1_000)
    await expectPublishedOnly(valid, refused)
    const loads = await readSubject(victim, 'oe.ctl.load.>', 500)
    expect(loads.map((message) => message.subject)).toEqual(['oe.ctl.load.L1.limit_load'])
  })
})

describe('commands beyond the grant’s bounds', () => {
  test('above max, below min, a v that is not a number, an until that is past: refused', async () => {
    const refused = [
      await command(ids.active, 'evse', 'CP1-1', 'limit_power', 40_000),
      await command(ids.active, 'evse', 'CP1-2', 'limit_power', -5),
      await command(ids.active, 'evse', 'CP1-1', 'limit_power', '7400'),
      await command(ids.active, 'evse', 'CP1-1', 'limit_power', 7_400, {
        extra: { until: Date.now() - 1_000 },
      }),
    ]
    await expectRefused(refused[0]!, 'AgreementStateError', /v 40000 is above the bound 22000/)
    await expectRefused(refused[1]!, 'AgreementStateError', /v -5 is below the bound 0/)
    await expectRefused(refused[2]!, 'AgreementStateError', /limit_power needs a numeric v/)
    await expectRefused(refused[3]!, 'AgreementStateError', /the command has expired/)
    await expectPublishedOnly(await validCommand(), refused)
  })

  test('issued an hour ago (held back through an outage), dated ahead, or with an until that is not a time: refused', async () => {
    const refused = [
      await command(ids.active, 'evse', 'CP1-1', 'limit_power', 7_400, { at: Date.now() - 3_600_000 }),
      await command(ids.active, 'evse', 'CP1-1', 'limit_power', 7_400, { at: Date.now() + 3_600_000 }),
      await command(ids.active, 'evse', 'CP1-1', 'limit_power', 7_400, { extra: { until: 'never' } }),
    ]
    await expectRefused(refused[0]!, 'AgreementStateError', /issued 3600 s ago/)
    await expectRefused(refused[1]!, 'AgreementStateError', /ahead of this node's clock/)
    await expectRefused(refused[2]!, 'AgreementStateError', /until must be a time/)
    await expectPublishedOnly(await validCommand(), refused)
  })
})

describe('commands for a site the grant does not cover', () => {
  // Needs the provider to pass its site index to checkControl (federation.ts, onControlStream).
  test('a station at another site, or at no known site: refused; at the granted site: published', async () => {
    const refused = [
      await command(ids.active, 'station', 'S1', 'connect', 0),
      await command(ids.active, 'station', 'X9', 'connect', 0),
    ]
    await expectRefused(refused[0]!, 'AgreementStateError', /station S1 is at site depot-south/)
    await expectRefused(refused[1]!, 'AgreementStateError', /the site of station X9 is not known/)
    const valid = await command(ids.active, 'station', 'N1', 'connect', 1)
    await expectPublishedOnly(valid, refused)
  })
})

describe('commands with bad signatures', () => {
  test('signed with another key, or altered after signing: refused as bad signatures', async () => {
    const refused = [
      await command(ids.active, 'evse', 'CP1-1', 'limit_power', 7_400, { signer: newIdentity() }),
      await command(ids.active, 'evse', 'CP1-1', 'limit_power', 7_400, {
        // Signed for 7.4 kW, sent as 0 W.
        alter: (cmd) => ({
          ...cmd,
          payload: new Uint8Array(encodeCbor({ v: 0, u: 'W', source: 'altered' })),
        }),
      }),
      await command(ids.active, 'evse', 'CP1-1', 'limit_power', 7_400, {
        alter: (cmd) => ({ ...cmd, rid: 'CP1-2' }),
      }),
      await command(ids.active, 'evse', 'CP1-1', 'limit_power', 7_400, {
        alter: (cmd) => ({ ...cmd, at: cmd.at + 1 }),
      }),
    ]
    for (const sent of refused)
      await expectRefused(sent, 'BadSignatureError', /the control command is not signed by the consumer/)
    await expectPublishedOnly(await validCommand(), refused)
    const altered = (await readSubject(victim, 'oe.ctl.>', 500)).filter((m) => m.data.source === 'altered')
    expect(altered).toEqual([])
  })

  test('a signature that is not bytes is refused as a frame that is not a command', async () => {
    const tag = newTag('unsigned')
    const cmd: ControlCommand = {
      id: ids.active,
      kind: 'evse',
      rid: 'CP1-1',
      command: 'limit_power',
      payload: new Uint8Array(encodeCbor({ v: 7_400, source: tag })),
      at: Date.now(),
    }
    const result = await rogue.exchange(
      target,
      encodeFrame({ t: 'control', cmd, sig: 'trust me' }),
      CONTROL_PROTOCOL,
    )
    const sent = { tag, ...result }
    await expectRefused(sent, 'AgreementFormatError', /expected a control frame/)
    await expectPublishedOnly(await validCommand(), [sent])
  })
})

describe('commands under agreements that do not allow them', () => {
  test('revoked, expired, only proposed: refused, naming the state', async () => {
    const refused = [
      await command(ids.revoked, 'evse', 'CP1-1', 'limit_power', 7_400),
      await command(ids.expiring, 'evse', 'CP1-1', 'limit_power', 7_400),
      await command(ids.proposed, 'evse', 'CP1-1', 'limit_power', 7_400),
    ]
    await expectRefused(refused[0]!, 'AgreementStateError', /the agreement is revoked/)
    await expectRefused(refused[1]!, 'AgreementStateError', /the agreement is expired/)
    await expectRefused(refused[2]!, 'AgreementStateError', /the agreement is proposed/)
    await expectPublishedOnly(await validCommand(), refused)
  })

  test("another peer's agreement, one where the rogue is the provider, an unknown id: refused", async () => {
    const refused = [
      await command(ids.foreign, 'evse', 'CP1-1', 'limit_power', 7_400),
      await command(ids.reversed, 'evse', 'CP1-1', 'limit_power', 7_400),
      await command('0'.repeat(64), 'evse', 'CP1-1', 'limit_power', 7_400),
    ]
    await expectRefused(refused[0]!, 'ForeignAgreementError', /does not let rogue control this node/)
    await expectRefused(refused[1]!, 'ForeignAgreementError', /does not let rogue control this node/)
    await expectRefused(refused[2]!, 'AgreementNotFoundError', /0{64}/)
    await expectPublishedOnly(await validCommand(), refused)
  })
})

describe('malformed control frames', () => {
  const garbage: [string, Uint8Array][] = [
    ['random bytes', new Uint8Array(Array.from({ length: 300 }, (_, i) => (i * 73 + 11) % 256))],
    [
      'a truncated frame',
      encodeFrame({ t: 'control', cmd: { id: 'a'.repeat(64) }, sig: new Uint8Array(64) }).slice(0, 20),
    ],
    ['a frame that is not CBOR', new Uint8Array([5, 0xff, 0xfe, 0xfd, 0xfc, 0xfb])],
    ['an oversized frame', new Uint8Array([0xff, 0xff, 0xff, 0x7f, 1, 2, 3])],
  ]

  test.each(garbage)('%s: the stream is reset, audited, and the node keeps serving', async (_name, bytes) => {
    const before = (await auditLog()).filter(
      (e) => e.type === 'protocol.bad_frame' && e.data.protocol === 'control',
    ).length
    const result = await rogue.exchange(target, bytes, CONTROL_PROTOCOL)
    expect(result.reply).toBeUndefined()
    expect(result.reset).toBe(true)
    await waitFor(
      async () =>
        (await auditLog()).filter((e) => e.type === 'protocol.bad_frame' && e.data.protocol === 'control')
          .length > before,
      5_000,
      'the bad control frame to be audited',
    )
    expect((await victim.fetch('/readyz')).status).toBe(200)
    // The same peer's next command, on a new stream, is served.
    await expectPublishedOnly(await validCommand(), [])
  })

  test('a frame of another protocol is refused as not a control frame', async () => {
    const result = await rogue.exchange(target, encodeFrame({ t: 'propose', doc: {} }), CONTROL_PROTOCOL)
    await expectRefused({ tag: 'none', ...result }, 'AgreementFormatError', /expected a control frame/)
    const nothing = await rogue.exchange(
      target,
      encodeFrame({ t: 'control', cmd: null, sig: new Uint8Array(64) }),
      CONTROL_PROTOCOL,
    )
    await expectRefused({ tag: 'none', ...nothing }, 'AgreementFormatError', /not a control command/)
    expect((await victim.fetch('/readyz')).status).toBe(200)
  })
})
