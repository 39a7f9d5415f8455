/**
 * Where the terminal UI gets its data and sends its actions: the running node's API, found
 * through the data dir on every reconnect (a restarted node may listen on another port).
 */
import type { AgreementDetail, AgreementState, AuditEntry } from '../../federation/index.ts'
import { ApiError, NodeClient, type NodeStatus } from '../../node/index.ts'

/** Everything one screen shows, from one round of requests. */
export interface UiSnapshot {
  status: NodeStatus
  /** Detail (grants, limits, flow counters) of every agreement that is proposed, accepted or active. */
  details: Record<string, AgreementDetail>
  /** Most recent audit entries, oldest first. */
  audit: AuditEntry[]
  /** When the answers arrived (epoch ms); times on screen are relative to it. */
  at: number
}

export type AgreementAction = 'accept' | 'reject' | 'revoke'

export interface UiSource {
  snapshot(options?: { signal?: AbortSignal }): Promise<UiSnapshot>
  act(
    id: string,
    action: AgreementAction,
    options?: { reason?: string; signal?: AbortSignal },
  ): Promise<{ id: string; state: string }>
}

/** States whose agreements may still carry data or wait for a signature: worth a detail request. */
export const LIVE_STATES: ReadonlySet<AgreementState> = new Set(['proposed', 'accepted', 'active'])

export interface NodeApiSourceInit {
  dataDir: string
  /**
   * How many audit entries each snapshot asks for: enough that receipts (one a second per
   * flowing agreement, shown collapsed to one line each) do not push the other events out.
   */
  auditLimit?: number
}

export class NodeApiSource implements UiSource {
  private client: NodeClient | undefined

  constructor(private readonly init: NodeApiSourceInit) {}

  async snapshot(options: { signal?: AbortSignal } = {}): Promise<UiSnapshot> {
    try {
      const client = await this.connect()
      const { signal } = options
      const [status, audit] = await Promise.all([
        client.getJson<NodeStatus>('/v1/status', { signal }),
        client.getJson<AuditEntry[]>(`/v1/audit?limit=${this.init.auditLimit ?? 500}`, { signal }),
      ])
      const live = status.agreements.filter((agreement) => LIVE_STATES.has(agreement.state))
      const fetched = await Promise.all(
        live.map((agreement) =>
          client
            .getJson<AgreementDetail>(`/v1/agreements/${agreement.id}`, { signal })
            .catch((error: unknown) => {
              // Gone between the two requests: it is simply not shown in detail.
              if (error instanceof ApiError && error.status === 404) return undefined
              throw error
            }),
        ),
      )
      const details: Record<string, AgreementDetail> = {}
      for (const detail of fetched) if (detail) details[detail.id] = detail
      return { status, details, audit, at: Date.now() }
    } catch (error) {
      this.client = undefined
      throw error
    }
  }

  async act(
    id: string,
    action: AgreementAction,
    options: { reason?: string; signal?: AbortSignal } = {},
  ): Promise<{ id: string; state: string }> {
    const client = await this.connect()
    const response = await client.request('POST', `/v1/agreements/${id}/${action}`, {
      body: JSON.stringify(options.reason ? { reason: options.reason } : {}),
      contentType: 'application/json',
      ...(options.signal ? { signal: options.signal } : {}),
    })
    return (await response.json()) as { id: string; state: string }
  }

  private async connect(): Promise<NodeClient> {
    this.client ??= await NodeClient.fromDataDir(this.init.dataDir)
    return this.client
  }
}
