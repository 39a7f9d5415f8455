/**
 * The replicas of a node and who owns which lease, in plain text: for `oe-node status` and the
 * TUI's replicas pane (no ink here, so `status` stays light).
 */
import type { NodeStatus } from '../../node/index.ts'
import { cell, formatRtt, formatSpan } from './format.ts'

export type ReplicaRow = NonNullable<NodeStatus['replicas']>[number]
export type LeaseRow = NonNullable<NodeStatus['leases']>[number]

/** `transfer.<64 hex>` → `transfer.1a2b3c4d…`: lease names carry whole agreement ids. */
export function shortLeaseName(name: string): string {
  return name.replace(/[0-9a-f]{16,}/g, (id) => `${id.slice(0, 8)}…`)
}

/** The leases a replica holds, by name (short). */
export function leasesOf(status: Pick<NodeStatus, 'leases'>, replicaId: string): LeaseRow[] {
  return (status.leases ?? []).filter((lease) => lease.owner === replicaId)
}

/** One line per replica: id, this one?, heartbeat age, leases held, first address. */
export function replicaLine(status: Pick<NodeStatus, 'leases'>, replica: ReplicaRow, width: number): string {
  const held = leasesOf(status, replica.id).length
  const state = replica.stale ? 'stale' : replica.self ? 'this' : 'up'
  const fixed = `${cell(replica.id, 16)} ${cell(state, 6)} ${cell(`hb ${formatRtt(replica.heartbeatAgoMs)}`, 10)} ${cell(`${held} lease${held === 1 ? '' : 's'}`, 10)} `
  return fixed + cell(replica.addrs[0] ?? '–', Math.max(0, width - fixed.length))
}

/** One line per lease: name, owner, how long held, last renewal seen. */
export function leaseLine(lease: LeaseRow, width: number): string {
  const fixed = `${cell(lease.owner, 16)} ${cell(`held ${formatSpan(lease.heldMs)}`, 14)} ${cell(`renewed ${formatRtt(lease.renewedAgoMs)} ago`, 20)} `
  return fixed + cell(shortLeaseName(lease.name), Math.max(0, width - fixed.length))
}

/** The replica and lease lines of `oe-node status` (nothing from a node that predates them). */
export function replicaStatusLines(status: NodeStatus, width = 100): string[] {
  const replicas = status.replicas ?? []
  if (replicas.length === 0) return []
  const lines = [
    `replica     ${status.replica?.id ?? '?'} (${replicas.length} replica${replicas.length === 1 ? '' : 's'}; streams ×${status.nats.replicas ?? 1})`,
  ]
  for (const replica of replicas) lines.push(`  ${replicaLine(status, replica, width - 2)}`)
  const leases = status.leases ?? []
  lines.push(`leases      ${leases.length}`)
  for (const lease of leases) lines.push(`  ${leaseLine(lease, width - 2)}`)
  return lines
}
