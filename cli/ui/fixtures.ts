/**
 * Fake node data for the UI's tests: two peers, agreements in every interesting state, two
 * plugins and some audit entries, as the API would answer them.
 */
import type { AgreementDetail, AgreementSummary, AuditEntry, Grant } from '../../federation/index.ts'
import { emptyStats, parseGrantSpec } from '../../federation/index.ts'
import type { NodeStatus } from '../../node/index.ts'
import type { UiSnapshot } from './source.ts'

export const AT = Date.parse('2027-03-01T12:00:00Z')
const HOUR = 3_600_000

export const hexId = (digit: string): string => digit.repeat(64)

export const IDS = {
  active: hexId('a'),
  pending: hexId('b'),
  ours: hexId('c'),
  revoked: hexId('d'),
}

export const PENDING_GRANTS: Grant[] = [
  parseGrantSpec('telemetry:kinds=evse;quantities=power,energy_import;minInterval=60s'),
  parseGrantSpec('standing:kinds=station,evse;attrs=vendor,model,maxPowerW'),
]

export function summary(overrides: Partial<AgreementSummary> & { id: string }): AgreementSummary {
  return {
    state: 'active',
    role: 'consumer',
    peer: 'chargeco',
    awaitingUs: false,
    purpose: 'network planning',
    provider: 'Chargeco',
    consumer: 'Gridco',
    validFrom: new Date(AT - HOUR).toISOString(),
    validUntil: new Date(AT + 24 * HOUR).toISOString(),
    grants: [parseGrantSpec('telemetry:kinds=meter;quantities=power')],
    ...overrides,
  }
}

export function detail(
  agreement: AgreementSummary,
  flow: Partial<AgreementDetail['flow']> = {},
  limits?: { maxRecordsPerSec?: number },
): AgreementDetail {
  return {
    ...agreement,
    body: { limits } as unknown as AgreementDetail['body'],
    signatures: {
      provider: 'sig',
      ...(agreement.state === 'proposed' ? {} : { consumer: 'sig' }),
    } as unknown as AgreementDetail['signatures'],
    proposedBy: 'provider',
    rejection: null,
    revocation: null,
    outbox: { pending: 0, lastError: null },
    flow: {
      ...emptyStats(),
      lastBatchAt: AT - 400,
      sessions: 1,
      session: true,
      rttMs: 3,
      ...flow,
    },
  }
}

export function audit(count: number): AuditEntry[] {
  const types = [
    'peer.added',
    'connection.accepted',
    'agreement.proposed',
    'agreement.active',
    'transfer.dropped',
  ]
  return Array.from({ length: count }, (_, seq) => ({
    seq,
    ts: AT - (count - seq) * 1000,
    type: types[seq % types.length]!,
    data: { peer: 'chargeco', id: IDS.active, ...(seq % 5 === 4 ? { counts: { not_granted: 2 } } : {}) },
    prev: '0'.repeat(64),
    hash: '1'.repeat(64),
  }))
}

export interface SnapshotOptions {
  /** Replicas of the node besides this one (their pane shows only when there are some). */
  otherReplicas?: number
  at?: number
  recordsIn?: number
  drops?: number
  /** Extra signed agreements, to fill panes beyond the screen. */
  extraAgreements?: number
  extraPeers?: number
  auditEntries?: number
  natsConnected?: boolean
  listening?: boolean
}

export function snapshot(options: SnapshotOptions = {}): UiSnapshot {
  const at = options.at ?? AT
  const active = summary({ id: IDS.active })
  const pending = summary({
    id: IDS.pending,
    state: 'proposed',
    awaitingUs: true,
    purpose: 'site planning with EVSE data',
    grants: PENDING_GRANTS,
  })
  const ours = summary({
    id: IDS.ours,
    state: 'proposed',
    role: 'provider',
    peer: 'flexco',
    provider: 'Gridco',
    consumer: 'Flexco',
    purpose: 'flexibility market',
  })
  const revoked = summary({ id: IDS.revoked, state: 'revoked', peer: 'flexco', provider: 'Flexco' })
  const extra = Array.from({ length: options.extraAgreements ?? 0 }, (_, index) =>
    summary({ id: index.toString(16).padStart(64, 'e'), state: 'expired' }),
  )
  const agreements = [active, pending, ours, revoked, ...extra]
  const status: NodeStatus = {
    org: 'Gridco',
    peerId: '12D3KooWQxGridcoPeerIdentityForTheTerminalUiTests8fKq',
    version: '0.1.0',
    uptimeS: 3723,
    dataDir: '/srv/oe-node',
    api: 'http://127.0.0.1:7410',
    listen: ['/ip4/0.0.0.0/tcp/7400'],
    addrs:
      options.listening === false
        ? []
        : ['/ip4/10.0.0.5/tcp/7400/p2p/12D3KooWQx', '/ip4/192.168.1.5/tcp/7400/p2p/12D3KooWQx'],
    nats: {
      url: 'nats://127.0.0.1:4222',
      connected: options.natsConnected ?? true,
      embedded: true,
      serverVersion: '2.10.27',
      replicas: 1,
    },
    replica: { id: 'r-0a1b2c' },
    replicas: [
      {
        id: 'r-0a1b2c',
        addrs: ['/ip4/10.0.0.5/tcp/7400/p2p/12D3KooWQx'],
        api: 'http://127.0.0.1:7410',
        version: '0.1.0',
        startedAt: new Date(AT - HOUR).toISOString(),
        heartbeatAgoMs: 400,
        self: true,
        stale: false,
      },
      ...Array.from({ length: options.otherReplicas ?? 0 }, (_, index) => ({
        id: `r-${(index + 1).toString(16).padStart(6, '0')}`,
        addrs: [`/ip4/10.0.0.${6 + index}/tcp/7400/p2p/12D3KooWQx`],
        api: `http://10.0.0.${6 + index}:7410`,
        version: '0.1.0',
        startedAt: new Date(AT - HOUR).toISOString(),
        heartbeatAgoMs: 1_600,
        self: false,
        stale: index === 2,
      })),
    ],
    leases: [
      {
        name: `transfer.${active.id}`,
        owner: options.otherReplicas ? 'r-000001' : 'r-0a1b2c',
        fence: 42,
        acquiredAt: new Date(AT - HOUR).toISOString(),
        heldMs: HOUR,
        renewedAgoMs: 600,
        mine: !options.otherReplicas,
      },
    ],
    peers: [
      {
        alias: 'chargeco',
        org: 'Chargeco',
        peerId: '12D3KooWChargeco',
        addrs: [],
        state: 'connected',
        rttMs: 3,
        lastSeen: new Date(at - 2000).toISOString(),
        lastError: null,
        added: new Date(AT - HOUR).toISOString(),
      },
      {
        alias: 'flexco',
        org: 'Flexco',
        peerId: '12D3KooWFlexco',
        addrs: [],
        state: 'disconnected',
        rttMs: null,
        lastSeen: null,
        lastError: 'dial failed',
        added: new Date(AT - HOUR).toISOString(),
      },
      ...Array.from({ length: options.extraPeers ?? 0 }, (_, index) => ({
        alias: `peer${index}`,
        org: `Org ${index}`,
        peerId: `12D3KooWPeer${index}`,
        addrs: [],
        state: 'connecting' as const,
        rttMs: null,
        lastSeen: null,
        lastError: null,
        added: new Date(AT - HOUR).toISOString(),
      })),
    ],
    agreements,
    plugins: [
      {
        id: 'ocpp',
        version: '1.0.0',
        state: 'running',
        ready: true,
        stations: { connected: 2, known: 3 },
      },
      { id: 'simulator', version: '1.0.0', state: 'failed', ready: false, error: 'no sites configured' },
    ],
  }
  return {
    status,
    details: {
      [IDS.active]: detail(
        active,
        {
          recordsIn: options.recordsIn ?? 1000,
          drops: options.drops ? { not_granted: options.drops } : {},
        },
        { maxRecordsPerSec: 5000 },
      ),
      [IDS.pending]: detail(pending, {}),
      [IDS.ours]: detail(ours, {}),
    },
    audit: audit(options.auditEntries ?? 6),
    at,
  }
}
