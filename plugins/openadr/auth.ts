/**
 * OAuth 2.0 client credentials (RFC 6749 §4.4) for the VTN: clients from config with a secret
 * and a role, opaque bearer tokens with a lifetime. Client credentials are read from the form
 * body or from HTTP Basic (§2.3.1, form-urlencoded id and secret). Tokens are kept by their
 * SHA-256 only, in the plugin's KV store, so they survive a restart and the store never holds a
 * usable token. Nothing here knows OpenADR: it is the shape any plugin serving OAuth needs.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto'
import type { PluginStore } from '../api.ts'

export interface OAuthClient {
  secret: string
  role: string
}

export interface TokenGrant {
  clientId: string
  role: string
  /** Epoch ms. */
  expiresAt: number
}

export type TokenRequestResult =
  | { ok: true; accessToken: string; expiresIn: number; grant: TokenGrant }
  | {
      ok: false
      status: 400 | 401
      error: 'invalid_request' | 'invalid_client' | 'unsupported_grant_type'
      description: string
    }

const digest = (value: string) => createHash('sha256').update(value, 'utf8').digest()
const tokenKey = (token: string) => `t.${createHash('sha256').update(token, 'utf8').digest('hex')}`

/** `application/x-www-form-urlencoded` decoding of a Basic credential part (RFC 6749 §2.3.1). */
function formDecode(value: string): string {
  return decodeURIComponent(value.replaceAll('+', ' '))
}

export function parseBasic(header: string | null): { id: string; secret: string } | undefined {
  if (!header) return undefined
  const match = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(header)
  if (!match) return undefined
  const decoded = Buffer.from(match[1]!, 'base64').toString('utf8')
  const colon = decoded.indexOf(':')
  if (colon < 0) return undefined
  try {
    return { id: formDecode(decoded.slice(0, colon)), secret: formDecode(decoded.slice(colon + 1)) }
  } catch {
    return undefined
  }
}

export function parseBearer(header: string | null): string | undefined {
  const match = header ? /^Bearer\s+([A-Za-z0-9._~+/=-]+)\s*$/i.exec(header) : null
  return match?.[1]
}

export interface TokenIssuerInit {
  clients: Record<string, OAuthClient>
  lifetimeS: number
}

export interface TokenIssuerComponents {
  store: PluginStore
  now?: () => number
}

export class TokenIssuer {
  /** Valid tokens seen since start, by key (saves a KV read per request). */
  private readonly cache = new Map<string, TokenGrant>()
  private readonly now: () => number

  constructor(
    private readonly init: TokenIssuerInit,
    private readonly components: TokenIssuerComponents,
  ) {
    this.now = components.now ?? Date.now
  }

  /** Handle a token request: form fields and the Authorization header. */
  async issue(form: URLSearchParams, authorization: string | null): Promise<TokenRequestResult> {
    const basic = parseBasic(authorization)
    if (authorization && /^Basic\s/i.test(authorization) && !basic)
      return { ok: false, status: 401, error: 'invalid_client', description: 'malformed Basic credentials' }
    const grantType = form.get('grant_type')
    if (!grantType)
      return { ok: false, status: 400, error: 'invalid_request', description: 'grant_type is required' }
    if (grantType !== 'client_credentials')
      return {
        ok: false,
        status: 400,
        error: 'unsupported_grant_type',
        description: 'only client_credentials is supported',
      }
    const formId = form.get('client_id')
    const formSecret = form.get('client_secret')
    if (basic && formId !== null && formId !== basic.id)
      return {
        ok: false,
        status: 400,
        error: 'invalid_request',
        description: 'client_id differs from the Basic credentials',
      }
    const id = basic?.id ?? formId
    const secret = basic?.secret ?? formSecret
    if (!id || secret === null || secret === undefined)
      return {
        ok: false,
        status: 400,
        error: 'invalid_request',
        description: 'client_id and client_secret are required',
      }
    const client = Object.hasOwn(this.init.clients, id) ? this.init.clients[id] : undefined
    // Compare digests: constant time whatever the lengths, and an unknown id costs the same.
    const expected = digest(client?.secret ?? '\u0000unknown client')
    if (!client || !timingSafeEqual(digest(secret), expected))
      return {
        ok: false,
        status: 401,
        error: 'invalid_client',
        description: 'unknown client or wrong secret',
      }
    const accessToken = randomBytes(32).toString('base64url')
    const grant: TokenGrant = {
      clientId: id,
      role: client.role,
      expiresAt: this.now() + this.init.lifetimeS * 1000,
    }
    const key = tokenKey(accessToken)
    await this.components.store.put(key, new TextEncoder().encode(JSON.stringify(grant)))
    this.cache.set(key, grant)
    return { ok: true, accessToken, expiresIn: this.init.lifetimeS, grant }
  }

  /** The grant of a bearer token, if it is known, unexpired, and its client still configured. */
  async verify(token: string | undefined): Promise<TokenGrant | undefined> {
    if (!token) return undefined
    const key = tokenKey(token)
    let grant = this.cache.get(key)
    if (!grant) {
      const stored = await this.components.store.get(key)
      if (!stored) return undefined
      try {
        grant = JSON.parse(new TextDecoder().decode(stored)) as TokenGrant
      } catch {
        return undefined
      }
      this.cache.set(key, grant)
    }
    const client = Object.hasOwn(this.init.clients, grant.clientId)
      ? this.init.clients[grant.clientId]
      : undefined
    if (grant.expiresAt <= this.now() || !client || client.role !== grant.role) {
      this.cache.delete(key)
      if (grant.expiresAt <= this.now()) await this.components.store.delete(key).catch(() => {})
      return undefined
    }
    return grant
  }

  /** Forget expired tokens (memory and store). */
  async prune(): Promise<number> {
    const now = this.now()
    let removed = 0
    for (const key of await this.components.store.keys('t.*')) {
      const stored = await this.components.store.get(key)
      let expired = true
      if (stored) {
        try {
          expired = (JSON.parse(new TextDecoder().decode(stored)) as TokenGrant).expiresAt <= now
        } catch {
          expired = true
        }
      }
      if (expired) {
        await this.components.store.delete(key)
        this.cache.delete(key)
        removed += 1
      }
    }
    return removed
  }
}
