/**
 * node: the composition root. Config (schema and layering), identity key, data dir, node cards,
 * lifecycle, the HTTP API, logging and metrics, and the client the CLI uses.
 *
 * @example
 * const config = await loadConfig({ file: paths.config, flags: { 'api.listen': '127.0.0.1:0' } })
 * const node = new OeNode({ dataDir, config }, { logger: createLogger(config.log) })
 * await node.start()
 * // … later
 * await node.stop()
 */
export { createCard, type NodeCard, parseCard } from './card.ts'
export { NodeClient } from './client.ts'
export {
  type ConfigInput,
  configSchema,
  envName,
  initialConfigText,
  type LoadConfigOptions,
  loadConfig,
  type NodeConfig,
  parseDuration,
  parseSize,
} from './config.ts'
export { type DataDirPaths, dataDirPaths, fileExists, resolveDataDir } from './data-dir.ts'
export * from './errors.ts'
export {
  type HealthReport,
  HttpApi,
  INGEST_TOKEN_NAME,
  type IngestResult,
  parseIngestBody,
  type RetiredToken,
  tokenDigest,
  tokenFiles,
  validateRecords,
} from './http-api.ts'
export {
  createIdentityKey,
  identityFromKeyObject,
  loadIdentity,
  type NodeIdentity,
  peerIdFromPublicKey,
  verifySignature,
} from './identity.ts'
export { defaultOrgName, type InitResult, initDataDir } from './init.ts'
export { createLogger, type Logger, silentLogger } from './logger.ts'
export {
  advertisedAddrs,
  type KeyRotationResult,
  NODE_VERSION,
  type NodeStatus,
  OeNode,
  reuseBoundPorts,
} from './node.ts'
