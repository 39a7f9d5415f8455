/**
 * Helpers for federation tests: peer two running nodes, wait for states, and act through the
 * API the CLI uses.
 */
import { type RunningNode, waitFor } from './node-process.ts'

export interface PeerJson {
  alias: string
  org: string
  peerId: string
  state: string
  rttMs: number | null
}

export interface AgreementJson {
  id: string
  state: string
  role: string
  peer: string
  awaitingUs: boolean
  validFrom: string
  validUntil: string
  grants: unknown[]
}

export async function api<T>(node: RunningNode, method: string, path: string, body?: unknown): Promise<T> {
  const response = await node.fetch(path, {
    method,
    ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }),
  })
  const text = await response.text()
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`)
  return (text.startsWith('{') || text.startsWith('[') ? JSON.parse(text) : text) as T
}

/** The result of an API call that may fail: status and parsed body. */
export async function call(node: RunningNode, method: string, path: string, body?: unknown) {
  const response = await node.fetch(path, {
    method,
    ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }),
  })
  return {
    status: response.status,
    body: (await response.json().catch(() => null)) as Record<string, string> | null,
  }
}

export async function cardOf(node: RunningNode): Promise<string> {
  return (await api<{ text: string }>(node, 'GET', '/v1/card')).text
}

export async function peerState(node: RunningNode, alias: string): Promise<string | undefined> {
  const peers = await api<PeerJson[]>(node, 'GET', '/v1/peers')
  return peers.find((peer) => peer.alias === alias)?.state
}

export async function waitPeerState(
  node: RunningNode,
  alias: string,
  state: string,
  timeoutMs = 20_000,
): Promise<void> {
  await waitFor(async () => (await peerState(node, alias)) === state, timeoutMs, `${alias} to be ${state}`)
}

/** Each node adds the other (aliases given), then both wait until connected. */
export async function peer(
  a: RunningNode,
  aliasOfB: string,
  b: RunningNode,
  aliasOfA: string,
): Promise<void> {
  await api(a, 'POST', '/v1/peers', { card: await cardOf(b), alias: aliasOfB })
  await api(b, 'POST', '/v1/peers', { card: await cardOf(a), alias: aliasOfA })
  await waitPeerState(a, aliasOfB, 'connected')
  await waitPeerState(b, aliasOfA, 'connected')
}

export async function agreementState(node: RunningNode, id: string): Promise<string | undefined> {
  const response = await node.fetch(`/v1/agreements/${id}`)
  if (response.status === 404) return undefined
  const body = (await response.json()) as AgreementJson & { error?: string; message?: string }
  if (!response.ok) return `${response.status} ${body.error}: ${body.message}`
  return body.state
}

export async function waitAgreementState(
  node: RunningNode,
  id: string,
  state: string,
  timeoutMs = 15_000,
): Promise<void> {
  let last: string | undefined
  await waitFor(
    async () => {
      last = await agreementState(node, id)
      return last === state
    },
    timeoutMs,
    `agreement ${id.slice(0, 12)} to be ${state} (is ${last})`,
  )
}

export const TELEMETRY_GRANT = 'telemetry:kinds=evse;quantities=power,energy_import;minInterval=60s'

export async function propose(
  node: RunningNode,
  peerAlias: string,
  options: { offer?: boolean; validUntil?: number; grants?: string[] } = {},
): Promise<string> {
  const result = await api<{ id: string; state: string }>(node, 'POST', '/v1/agreements', {
    peer: peerAlias,
    grants: options.grants ?? [TELEMETRY_GRANT],
    purpose: 'integration test',
    validUntil: new Date(options.validUntil ?? Date.now() + 86_400_000).toISOString(),
    offer: options.offer ?? false,
  })
  return result.id
}

export interface AuditLine {
  seq: number
  type: string
  data: Record<string, unknown>
}

export async function auditEntries(node: RunningNode): Promise<AuditLine[]> {
  return api<AuditLine[]>(node, 'GET', '/v1/audit?limit=500')
}
