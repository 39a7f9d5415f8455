/**
 * Who sees and changes what (OpenADR 3.1.0 Definition, "Object Privacy"; the same rules serve
 * 3.0.1 clients):
 *
 * - BL sees everything and writes programs, events, vens, resources and subscriptions.
 * - A VEN writes reports, subscriptions, its ven object and its resources; it never writes
 *   programs or events, and never writes targets (targets given by a VEN are ignored, and a
 *   VEN's update keeps what BL granted).
 * - vens, resources, reports and subscriptions are a VEN's own when their clientID is the VEN's:
 *   it sees and changes only those; another VEN's object reads as absent (404), so a VEN learns
 *   nothing about others.
 * - programs and events without targets are for every client. With targets, a VEN sees one when
 *   its granted targets (those of its ven object and that ven's resources), narrowed to the
 *   targets it asks for if it asks, share one with the object; the object is shown with only the
 *   shared targets (target hiding). A VEN without a ven object sees no targeted object.
 * - A query with targets (BL or VEN) returns only objects with a matching target: filters add up.
 */
import type { Client, ObjectKind, StoredObject } from './model.ts'

export const OWNED_KINDS: ReadonlySet<ObjectKind> = new Set(['ven', 'resource', 'report', 'subscription'])
export const TARGETED_KINDS: ReadonlySet<ObjectKind> = new Set(['program', 'event'])

export type Action = 'read' | 'create' | 'update' | 'delete'

/** Whether the role may do this to this kind at all (403 when not). */
export function mayWrite(client: Client, kind: ObjectKind, action: Exclude<Action, 'read'>): boolean {
  switch (kind) {
    case 'program':
    case 'event':
      return client.role === 'bl'
    case 'report':
      // write_reports: only VENs write reports.
      return client.role === 'ven' || action === 'delete'
    default:
      return true
  }
}

/** An owned object is visible to BL, and to the VEN whose clientID it carries. */
export function owns(client: Client, object: StoredObject): boolean {
  return client.role === 'bl' || (object.clientID !== undefined && object.clientID === client.clientId)
}

export interface TargetView {
  visible: boolean
  /** The targets to show (target hiding); undefined to show none. */
  targets?: string[]
}

/**
 * Visibility of a program or event. `granted`: the VEN's targets (undefined when it has no ven
 * object); `requested`: the targets the query asks for.
 */
export function targetView(
  client: Client,
  objectTargets: readonly string[] | undefined,
  granted: ReadonlySet<string> | undefined,
  requested: readonly string[] | undefined,
): TargetView {
  const targets = objectTargets ?? []
  if (client.role === 'bl') {
    if (requested && requested.length > 0 && !targets.some((target) => requested.includes(target)))
      return { visible: false }
    return { visible: true, ...(targets.length > 0 ? { targets: [...targets] } : {}) }
  }
  const asked = requested && requested.length > 0 ? requested : undefined
  if (targets.length === 0) return { visible: asked === undefined }
  if (!granted) return { visible: false }
  const effective = asked ? asked.filter((target) => granted.has(target)) : [...granted]
  const shared = targets.filter((target) => effective.includes(target))
  return shared.length > 0 ? { visible: true, targets: shared } : { visible: false }
}
