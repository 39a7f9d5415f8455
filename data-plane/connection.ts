/**
 * Connecting to the data plane: the embedded nats-server or an external NATS (`--nats-url`,
 * optional credentials file). The server must be 2.10 or newer, with JetStream.
 */
import { readFile } from 'node:fs/promises'
import { credsAuthenticator, type NatsConnection } from '@nats-io/nats-core'
import { connect } from '@nats-io/transport-node'
import { NatsServerVersionError, NotConnectedError } from './errors.ts'
import { isVersionAtLeast } from './nats-server.ts'

export interface DataPlaneConnectionInit {
  servers: string
  user?: string
  password?: string
  /** A NATS `.creds` file (JWT + nkey seed). */
  credsFile?: string
  name?: string
  timeoutMs?: number
}

export async function connectDataPlane(
  init: DataPlaneConnectionInit,
  options: { signal?: AbortSignal } = {},
): Promise<NatsConnection> {
  options.signal?.throwIfAborted()
  const authenticator = init.credsFile
    ? credsAuthenticator(new Uint8Array(await readFile(init.credsFile)))
    : undefined
  let nc: NatsConnection
  try {
    nc = await connect({
      servers: init.servers,
      ...(init.user !== undefined ? { user: init.user, pass: init.password } : {}),
      ...(authenticator ? { authenticator } : {}),
      name: init.name ?? 'oe-node',
      timeout: init.timeoutMs ?? 5_000,
      reconnect: true,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 250,
      reconnectJitter: 100,
      pingInterval: 10_000,
      waitOnFirstConnect: false,
    })
  } catch (error) {
    throw new NotConnectedError(
      `could not connect to NATS at ${redactUrl(init.servers)}: ${(error as Error).message}`,
    )
  }
  const version = nc.info?.version ?? '0.0.0'
  if (!isVersionAtLeast(version)) {
    await nc.close()
    throw new NatsServerVersionError(version)
  }
  return nc
}

/** A NATS URL with any password removed, for logs and status. */
export function redactUrl(url: string): string {
  return url.replace(/\/\/([^:@/]+):[^@/]*@/g, '//$1:***@')
}
