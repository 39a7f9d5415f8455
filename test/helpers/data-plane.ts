/**
 * An embedded nats-server in a temp dir and a started DataPlane on it, with open retention
 * limits: the set-up of tests that exercise the data plane without a whole node.
 */
import { join } from 'node:path'
import type { NatsConnection } from '@nats-io/nats-core'
import {
  connectDataPlane,
  DataPlane,
  EmbeddedNatsServer,
  type Logger,
  type RetentionLimits,
  STREAMS,
} from '../../data-plane/index.ts'
import { tempDir } from './node-process.ts'

export interface TestDataPlane {
  dir: string
  server: EmbeddedNatsServer
  connection: NatsConnection
  dataPlane: DataPlane
  /** Stop the data plane, close the connection, stop the server (the temp dir goes with cleanupAll). */
  stop(): Promise<void>
}

export async function startDataPlane(prefix: string, logger: Logger): Promise<TestDataPlane> {
  const dir = await tempDir(prefix)
  const server = new EmbeddedNatsServer({ dir: join(dir, 'nats') }, { logger })
  await server.start()
  const connection = await connectDataPlane({ servers: server.url, ...server.credentials })
  const limits = Object.fromEntries(
    Object.keys(STREAMS).map((name) => [name, { maxAgeMs: 0, maxBytes: -1 }]),
  ) as RetentionLimits
  const dataPlane = new DataPlane({ limits }, { connection, logger })
  await dataPlane.start()
  return {
    dir,
    server,
    connection,
    dataPlane,
    async stop() {
      await dataPlane.stop()
      await connection.close()
      await server.stop()
    },
  }
}
