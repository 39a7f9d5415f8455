/**
 * The MQTT notifier binding of OpenADR 3.1.0 (Definition §"Notifications via Additional
 * Protocols"): topic names, the binding object `/notifiers` answers, the topics each
 * `/notifiers/mqtt/topics/…` operation names for a client, and the topics a change of an
 * object is published on.
 *
 * Topics live under `openadr-vtn/` (the node gives a plugin nothing else). The tree a business
 * logic client sees mirrors the REST paths: `openadr-vtn/programs/create`,
 * `openadr-vtn/programs/<programID>/update`, `openadr-vtn/programs/<programID>/events/create`,
 * `openadr-vtn/vens/<venID>/events/update`, … Everything a VEN may receive is under its own
 * `openadr-vtn/vens/<venID>/`, as the VEN may see it (the VTN publishes each program and event
 * once per VEN that may see it, with the targets narrowed as in REST answers), so a VEN is only
 * ever allowed to subscribe there. VEN clients subscribe, nobody but the VTN publishes.
 *
 * Authentication is `OAUTH2_BEARER_TOKEN`: username the client id, password a bearer token from
 * the VTN's token endpoint; the connection ends when the token expires.
 */
import type { Operation, StoredObject } from './model.ts'

export const MQTT_ROOT = 'openadr-vtn'

/** `notifierOperationsTopics`: the topic per operation, and `ALL` as a one-level wildcard. */
export interface OperationTopics {
  CREATE?: string
  UPDATE: string
  DELETE: string
  ALL: string
}

export function operationTopics(base: string, withCreate: boolean): OperationTopics {
  return {
    ...(withCreate ? { CREATE: `${base}/create` } : {}),
    UPDATE: `${base}/update`,
    DELETE: `${base}/delete`,
    ALL: `${base}/+`,
  }
}

export const topicBase = {
  kind: (kind: StoredObject['kind']) => `${MQTT_ROOT}/${kind}s`,
  program: (programID: string) => `${MQTT_ROOT}/programs/${programID}`,
  programEvents: (programID: string) => `${MQTT_ROOT}/programs/${programID}/events`,
  ven: (venID: string) => `${MQTT_ROOT}/vens/${venID}`,
  venObjects: (venID: string, what: 'events' | 'programs' | 'resources') =>
    `${MQTT_ROOT}/vens/${venID}/${what}`,
}

/** What a client connecting as a VEN may subscribe to: its own ven trees. */
export function venFilters(venIDs: readonly string[]): string[] {
  return venIDs.map((venID) => `${topicBase.ven(venID)}/#`)
}

export const BL_FILTERS = [`${MQTT_ROOT}/#`]

const leaf = (operation: Operation) => operation.toLowerCase()

/** Topics a change is published on for business logic (the full object). */
export function blTopics(object: StoredObject, operation: Operation): string[] {
  const op = leaf(operation)
  const topics = [`${topicBase.kind(object.kind)}/${op}`]
  switch (object.kind) {
    case 'program':
      if (operation !== 'CREATE') topics.push(`${topicBase.program(object.id)}/${op}`)
      break
    case 'event':
      if (typeof object.body.programID === 'string')
        topics.push(`${topicBase.programEvents(object.body.programID)}/${op}`)
      break
    case 'ven':
      if (operation !== 'CREATE') topics.push(`${topicBase.ven(object.id)}/${op}`)
      break
    case 'resource':
      if (typeof object.body.venID === 'string')
        topics.push(`${topicBase.venObjects(object.body.venID, 'resources')}/${op}`)
      break
  }
  return topics
}

/** The topic a program or event visible to a VEN is published on for it. */
export function venTopic(venID: string, object: StoredObject, operation: Operation): string | undefined {
  if (object.kind !== 'program' && object.kind !== 'event') return undefined
  return `${topicBase.venObjects(venID, object.kind === 'program' ? 'programs' : 'events')}/${leaf(operation)}`
}

/** The `MQTT` member of `/notifiers` (mqttNotifierBindingObject). */
export function mqttBinding(uris: string[]): Record<string, unknown> {
  return {
    URIS: uris,
    serialization: 'JSON',
    authentication: { method: 'OAUTH2_BEARER_TOKEN', username: '{clientID}' },
  }
}

/**
 * The broker URI a client reached through `requestHost` should use: the listener's, with an
 * unspecified listen host (0.0.0.0, ::) replaced by the host the client asked the VTN by.
 */
export function brokerUri(listenerUrl: string, requestHost: string | null): string {
  const url = new URL(listenerUrl)
  if ((url.hostname === '0.0.0.0' || url.hostname === '[::]') && requestHost) {
    const host = new URL(`http://${requestHost}`).hostname
    return `${url.protocol}//${host}:${url.port}`
  }
  return `${url.protocol}//${url.host}`
}
