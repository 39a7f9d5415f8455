/**
 * Peering and agreements between the demo's organisations, through each node's admin API as an
 * operator would: exchange cards, add each other as peers, then the consumer proposes and the
 * provider accepts.
 */
import { ApiError, type NodeClient } from '../../node/index.ts'
import { DemoSetupError } from './errors.ts'
import type { DemoNode } from './org-node.ts'

const AGREEMENT_DAYS = 1
const WAIT_MS = 20_000

async function post<T>(client: NodeClient, path: string, body: unknown, signal?: AbortSignal): Promise<T> {
  const response = await client.request('POST', path, {
    body: JSON.stringify(body),
    contentType: 'application/json',
    ...(signal ? { signal } : {}),
  })
  return (await response.json()) as T
}

/** Poll until `check` is true; the demo's stop signal or the deadline ends the wait. */
async function waitUntil(
  check: () => Promise<boolean>,
  what: string,
  signal: AbortSignal | undefined,
  timeoutMs = WAIT_MS,
): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    signal?.throwIfAborted()
    if (await check().catch(() => false)) return
    await Bun.sleep(100)
  }
  throw new DemoSetupError(`timed out after ${timeoutMs / 1000} s waiting for ${what}`)
}

/** A peers B as `aliasOfB` and B peers A as `aliasOfA`; both wait until connected. */
export async function peerNodes(
  a: DemoNode,
  aliasOfB: string,
  b: DemoNode,
  aliasOfA: string,
  options: { signal?: AbortSignal } = {},
): Promise<void> {
  const { signal } = options
  const cardOf = async (node: DemoNode) =>
    (await node.client.getJson<{ text: string }>('/v1/card', signal ? { signal } : {})).text
  await post(a.client, '/v1/peers', { card: await cardOf(b), alias: aliasOfB }, signal)
  await post(b.client, '/v1/peers', { card: await cardOf(a), alias: aliasOfA }, signal)
  const connected = async (node: DemoNode, alias: string) => {
    const peers = await node.client.getJson<{ alias: string; state: string }[]>('/v1/peers')
    return peers.some((peer) => peer.alias === alias && peer.state === 'connected')
  }
  await waitUntil(
    async () => (await connected(a, aliasOfB)) && (await connected(b, aliasOfA)),
    `${a.org} and ${b.org} to connect`,
    signal,
  )
}

export interface AgreementPlan {
  /** Short label for people, e.g. `telemetry`. */
  label: string
  provider: DemoNode
  consumer: DemoNode
  /** The provider's alias on the consumer's node. */
  providerAlias: string
  grants: string[]
  purpose: string
}

export interface DemoAgreement {
  id: string
  label: string
  provider: string
  consumer: string
  providerAlias: string
  grants: string[]
  consumerNode: DemoNode
}

async function agreementState(node: DemoNode, id: string): Promise<string | undefined> {
  try {
    return (await node.client.getJson<{ state: string }>(`/v1/agreements/${id}`)).state
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return undefined
    throw error
  }
}

/** The consumer proposes, the provider accepts once the proposal has reached it. */
export async function establishAgreement(
  plan: AgreementPlan,
  options: { signal?: AbortSignal } = {},
): Promise<DemoAgreement> {
  const { signal } = options
  const { provider, consumer } = plan
  const { id } = await post<{ id: string }>(
    consumer.client,
    '/v1/agreements',
    {
      peer: plan.providerAlias,
      grants: plan.grants,
      purpose: plan.purpose,
      validUntil: new Date(Date.now() + AGREEMENT_DAYS * 86_400_000).toISOString(),
    },
    signal,
  )
  await waitUntil(
    async () => (await agreementState(provider, id)) === 'proposed',
    `${provider.org} to receive the ${plan.label} proposal`,
    signal,
  )
  await post(provider.client, `/v1/agreements/${id}/accept`, {}, signal)
  await waitUntil(
    async () => (await agreementState(consumer, id)) === 'active',
    `the ${plan.label} agreement to be active at ${consumer.org}`,
    signal,
  )
  return {
    id,
    label: plan.label,
    provider: provider.org,
    consumer: consumer.org,
    providerAlias: plan.providerAlias,
    grants: plan.grants,
    consumerNode: consumer,
  }
}

/** Records the consumer has received under an agreement (its `flow.recordsIn`); undefined if unknown. */
export async function recordsReceived(agreement: DemoAgreement): Promise<number | undefined> {
  try {
    const detail = await agreement.consumerNode.client.getJson<{ flow?: { recordsIn?: number } }>(
      `/v1/agreements/${agreement.id}`,
      { signal: AbortSignal.timeout(2_000) },
    )
    return detail.flow?.recordsIn ?? 0
  } catch {
    return undefined
  }
}

/** The attributes standing grants allow, per provider alias (for the demo's projection check). */
export function grantedAttrs(
  agreements: readonly Pick<DemoAgreement, 'providerAlias' | 'grants'>[],
): Map<string, Set<string>> {
  const allowed = new Map<string, Set<string>>()
  for (const agreement of agreements) {
    for (const grant of agreement.grants) {
      if (!grant.startsWith('standing:')) continue
      const set = allowed.get(agreement.providerAlias) ?? new Set<string>()
      for (const part of grant.slice('standing:'.length).split(';')) {
        if (!part.startsWith('attrs=')) continue
        for (const attr of part.slice('attrs='.length).split(','))
          if (attr.trim() !== '') set.add(attr.trim())
      }
      allowed.set(agreement.providerAlias, set)
    }
  }
  return allowed
}
