/**
 * The operator's view of OpenADR: one node runs the VTN and a VEN that follows it. After a
 * limit_power on the VEN's resource (an event for it, acted on and reported), `oe-node status`
 * (`--json` and text) and the terminal UI's plugin screen show the VTN's VENs (name, resources,
 * last seen, active events, last report) and the events in force, and the VEN's link to its VTN
 * (URL, version, registered, last poll, active events).
 */
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { connect } from '@nats-io/transport-node'
import { encode as encodeCbor } from 'cbor-x'
import { cleanup, render } from 'ink-testing-library'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { Screen } from '../cli/ui/components.tsx'
import { reduceKey } from '../cli/ui/keys.ts'
import { initialUiState, listsOf, type NodeView, type UiState } from '../cli/ui/model.ts'
import type { UiSnapshot } from '../cli/ui/source.ts'
import { freePort } from '../data-plane/index.ts'
import type { NodeStatus } from '../node/index.ts'
import { resourceIdFor } from '../plugins/openadr/index.ts'
import { api } from './helpers/federation.ts'
import {
  cleanupAll,
  type RunningNode,
  readSubject,
  runCli,
  startNode,
  waitFor,
} from './helpers/node-process.ts'

let node: RunningNode
let vtnUrl: string
let status: NodeStatus
const rid = resourceIdFor('site-9', 'battery')

beforeAll(async () => {
  const port = await freePort()
  vtnUrl = `http://127.0.0.1:${port}/openadr3/3.1.0`
  node = await startNode({
    config: `org = "Utility"
[plugins.openadr-vtn]
enabled = true
listen = "127.0.0.1:${port}"
[plugins.openadr-vtn.clients.ven-9]
secret = "ven-9-secret-123"
role = "ven"
[plugins.openadr-ven]
enabled = true
vtn_url = "${vtnUrl}"
client_id = "ven-9"
client_secret = "ven-9-secret-123"
ven_name = "site-9"
poll_interval = "1s"
[plugins.openadr-ven.resources]
battery = "battery.site9-bat"
`,
  })
  await waitFor(
    async () => (await node.fetch(`/v1/resources/der/${rid}`)).status === 200,
    20_000,
    'VEN resource',
  )
  const { nats } = await api<{ nats: { url: string } }>(node, 'GET', '/v1/status')
  const auth = JSON.parse(await readFile(join(node.dataDir, 'nats', 'auth.json'), 'utf8'))
  const nc = await connect({ servers: nats.url, user: auth.user, pass: auth.password })
  nc.publish(
    `oe.ctl.der.${rid}.limit_power`,
    encodeCbor({ v: 2_500, u: 'W', until: Date.now() + 3_600_000, source: 'control room' }),
  )
  await nc.flush()
  await nc.close()
  await waitFor(
    async () => (await readSubject(node, `oe.tel.der.${rid}.power_limit`, 300)).length >= 1,
    20_000,
    'the VEN’s setpoint report',
  )
  status = await api<NodeStatus>(node, 'GET', '/v1/status')
})

afterAll(async () => {
  cleanup()
  await cleanupAll()
})

const ANSI = new RegExp(`${String.fromCharCode(27)}\\[[0-9;]*m`, 'g')

describe('oe-node status', () => {
  test('--json: the VTN lists its VENs and active events, the VEN its VTN link', async () => {
    const result = await runCli(['--data-dir', node.dataDir, 'status', '--json'])
    expect(result.code).toBe(0)
    const plugins = (JSON.parse(result.stdout) as NodeStatus).plugins
    const vtn = plugins.find((plugin) => plugin.id === 'openadr-vtn')!
    const ven = plugins.find((plugin) => plugin.id === 'openadr-ven')!
    expect(vtn.vens).toEqual([
      {
        id: ven.venID,
        name: 'site-9',
        clientID: 'ven-9',
        resources: ['battery'],
        lastSeen: expect.any(Number),
        activeEvents: 1,
        lastReport: expect.objectContaining({ values: { SETPOINT: 2.5 }, at: expect.any(Number) }),
      },
    ])
    expect(vtn.activeEvents).toEqual([
      expect.objectContaining({
        program: 'oe-node-control',
        targets: [`oe:${rid}`],
        now: { type: 'IMPORT_CAPACITY_LIMIT', value: 2.5 },
        end: expect.any(Number),
      }),
    ])
    expect(ven).toMatchObject({
      vtn: vtnUrl,
      openadrVersion: '3.1.0',
      connected: true,
      registered: true,
      lastPoll: expect.any(Number),
      activeEvents: [
        expect.objectContaining({
          resources: ['battery'],
          now: [{ type: 'IMPORT_CAPACITY_LIMIT', value: 2.5 }],
        }),
      ],
    })
  })

  test('text: one line per plugin, then the VENs, the events and the VTN link in words', async () => {
    const result = await runCli(['--data-dir', node.dataDir, 'status'])
    expect(result.code).toBe(0)
    const text = result.stdout
    expect(text).toMatch(/openadr-vtn {2}running · 1 VEN · 1 event/)
    expect(text).toMatch(/openadr-ven {2}running · VTN up · 1 event/)
    expect(text).toMatch(/site-9 +battery +(now|\d+s ago) +1 +SETPOINT 2\.5 · /)
    expect(text).toMatch(/oe-node-control +IMPORT_CAPACITY_LIMIT 2\.5 +to \d\d:\d\d:\d\d +oe:site-9_battery/)
    expect(text).toContain(`VTN         ${vtnUrl} (OpenADR 3.1.0)`)
    expect(text).toMatch(/registered +as site-9 \(venID /)
    expect(text).toContain('MQTT        off (webhooks only)')
    for (const line of text.split('\n')) expect([...line].length, line).toBeLessThanOrEqual(100)
  })
})

describe('oe-node ui', () => {
  const snapshot = (): UiSnapshot => ({ status, details: {}, audit: [], at: Date.now() })
  const view = (): NodeView => ({ snapshot: snapshot(), rates: {}, unreachable: undefined })
  const frame = (state: UiState) => {
    const { lastFrame, unmount } = render(
      <Screen view={view()} state={state} size={{ columns: 80, rows: 24 }} />,
    )
    const text = (lastFrame() ?? '').replace(ANSI, '')
    unmount()
    return text
  }

  test('the Plugins pane says what each OpenADR plugin serves or follows', () => {
    const text = frame(initialUiState)
    expect(text).toMatch(/openadr-vtn +running +1 VEN · 1 event/)
    expect(text).toMatch(/openadr-ven +running +VTN up · 1 event/)
  })

  test('enter on a plugin opens its screen: the VTN’s VENs and events, the VEN’s link; esc goes back', () => {
    const lists = listsOf(snapshot())
    let state: UiState = { ...initialUiState, focus: 'plugins', selected: { plugins: 'openadr-vtn' } }
    state = reduceKey(state, '', { return: true }, snapshot(), lists).state
    expect(state).toMatchObject({ screen: 'plugin', pluginId: 'openadr-vtn' })
    const vtn = frame(state)
    expect(vtn).toContain('Plugin openadr-vtn')
    expect(vtn).toContain('VENs (1)')
    expect(vtn).toMatch(/site-9 +battery +(now|\d+s ago) +1 +SETPOINT 2\.5/)
    expect(vtn).toContain('Active events (1)')
    expect(vtn).toContain('IMPORT_CAPACITY_LIMIT 2.5')
    for (const line of vtn.split('\n')) expect([...line].length, line).toBeLessThanOrEqual(80)
    expect(vtn.split('\n').length).toBeLessThanOrEqual(24)

    const back = reduceKey(state, '', { escape: true }, snapshot(), lists).state
    expect(back.screen).toBe('dashboard')
    const down = reduceKey(back, '', { downArrow: true }, snapshot(), lists).state
    const ven = frame(reduceKey(down, '', { return: true }, snapshot(), lists).state)
    expect(ven).toContain('Plugin openadr-ven')
    expect(ven).toContain(`VTN         ${vtnUrl} (OpenADR 3.1.0)`)
    expect(ven).toContain('● connected')
    expect(ven).toMatch(/registered +as site-9/)
    expect(ven).toMatch(/IMPORT_CAPACITY_LIMIT 2\.5 +to \d\d:\d\d:\d\d +battery/)
  })
})
