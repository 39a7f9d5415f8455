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
  const { servers, user, password, token } = splitCredentials(init.servers)
  const chosenUser = init.user ?? user
  const chosenPassword = init.password ?? password
  let nc: NatsConnection
  try {
    nc = await connect({
      servers,
      ...(chosenUser !== undefined ? { user: chosenUser, pass: chosenPassword } : {}),
      ...(token !== undefined ? { token } : {}),
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

/**
 * Take credentials out of `nats://user:pass@host` (or `nats://token@host`) URLs: the client is
 * given them as options, so they never sit in a server list that may be logged.
 */
export function splitCredentials(urls: string): {
  servers: string[]
  user?: string
  password?: string
  token?: string
} {
  const result: { servers: string[]; user?: string; password?: string; token?: string } = { servers: [] }
  for (const raw of urls
    .split(',')
    .map((url) => url.trim())
    .filter(Boolean)) {
    const match = /^([a-z]+:\/\/)([^@/]*)@(.*)$/.exec(raw)
    if (!match) {
      result.servers.push(raw)
      continue
    }
    const userinfo = match[2]!
    const colon = userinfo.indexOf(':')
    if (colon >= 0) {
      result.user = decodeURIComponent(userinfo.slice(0, colon))
      result.password = decodeURIComponent(userinfo.slice(colon + 1))
    } else if (userinfo !== '') {
      result.token = decodeURIComponent(userinfo)
    }
    result.servers.push(`${match[1]}${match[3]}`)
  }
  return result
}

/** A NATS URL with any password removed, for logs and status. */
export function redactUrl(url: string): string {
  return url.replace(/\/\/([^:@/]+):[^@/]*@/g, '//$1:***@')
}
