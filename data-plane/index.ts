/**
 * data-plane: the canonical model, codecs and subject scheme, the embedded nats-server
 * supervisor, JetStream streams and KV, and the publishing facade.
 *
 * @example
 * const server = new EmbeddedNatsServer({ dir: '/var/lib/oe-node/nats' }, { logger })
 * await server.start()
 * const nc = await connectDataPlane({ servers: server.url, ...server.credentials })
 * const dataPlane = new DataPlane({ limits }, { connection: nc, logger })
 * await dataPlane.start()
 * await dataPlane.publishTelemetry([parseTelemetryRecord(input)])
 */
export { decodeCbor, decodeForDisplay, encodeCbor, encodeTelemetryPayload } from './codec.ts'
export { connectDataPlane, type DataPlaneConnectionInit, redactUrl } from './connection.ts'
export {
  closeConsumerMessages,
  DataPlane,
  type DataPlaneComponents,
  type DataPlaneInit,
  type OutgoingMessage,
  type SubjectMessage,
} from './data-plane.ts'
export * from './errors.ts'
export { FixedHeader } from './fixed-header.ts'
export {
  LEASES_BUCKET,
  type Lease,
  type LeaseInfo,
  LeaseLostError,
  LeaseManager,
  type LeaseManagerComponents,
  type LeaseManagerInit,
  LeaseNameError,
} from './lease.ts'
export * from './model.ts'
export {
  MqttAuthCallout,
  type MqttAuthorizer,
  type MqttConnectRequest,
  type MqttGrant,
  mqttFilterToSubjects,
  mqttTopicToSubject,
} from './mqtt-auth.ts'
export {
  type EmbeddedMqtt,
  type EmbeddedMqttInit,
  EmbeddedNatsServer,
  type EmbeddedNatsServerInit,
  type EmbeddedNatsServerState,
  freePort,
  isVersionAtLeast,
  type Logger,
  locateNatsServer,
  MIN_NATS_SERVER_VERSION,
  type NatsCredentials,
  natsServerVersion,
} from './nats-server.ts'
export {
  defaultReplicas,
  ensureStreams,
  RESOURCES_BUCKET,
  type RetentionLimits,
  STREAMS,
  type StreamLimits,
  type StreamName,
  streamForSubject,
} from './streams.ts'
export {
  isValidSubjectFilter,
  parseTelemetrySubject,
  SUBJECT_ROOT,
  subjects,
  type TelemetrySubject,
} from './subjects.ts'
