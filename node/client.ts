/**
 * The client the CLI and TUI use to talk to a running node: it finds the API through
 * `<data-dir>/api` and authenticates with `<data-dir>/admin.token`.
 */
import { readFile } from 'node:fs/promises'
import { dataDirPaths, readSecretFile } from './data-dir.ts'
import { ApiError, NodeNotRunningError } from './errors.ts'

export class NodeClient {
  constructor(
    readonly baseUrl: string,
    private readonly token: string,
  ) {}

  static async fromDataDir(dataDir: string): Promise<NodeClient> {
    const paths = dataDirPaths(dataDir)
    let url: string
    try {
      url = (await readFile(paths.api, 'utf8')).trim()
    } catch {
      throw new NodeNotRunningError(
        `no node is running for data dir ${dataDir} (start one with: oe-node start)`,
      )
    }
    let token: string
    try {
      token = await readSecretFile(paths.adminToken)
    } catch (error) {
      throw new NodeNotRunningError(`cannot read the admin token of ${dataDir}: ${(error as Error).message}`)
    }
    return new NodeClient(url, token)
  }

  async request(
    method: string,
    path: string,
    options: { body?: string | Uint8Array; contentType?: string; signal?: AbortSignal } = {},
  ): Promise<Response> {
    const headers: Record<string, string> = { authorization: `Bearer ${this.token}` }
    if (options.contentType) headers['content-type'] = options.contentType
    let response: Response
    try {
      response = await fetch(`${this.baseUrl}${path}`, {
        method,
        headers,
        ...(options.body !== undefined ? { body: options.body } : {}),
        ...(options.signal ? { signal: options.signal } : {}),
      })
    } catch (error) {
      if ((error as Error).name === 'AbortError' || (error as Error).name === 'TimeoutError') throw error
      throw new NodeNotRunningError(
        `the node at ${this.baseUrl} does not answer: ${(error as Error).message}`,
      )
    }
    if (!response.ok) {
      const text = await response.text()
      let name = 'HttpError'
      let message = text
      try {
        const parsed = JSON.parse(text) as { error?: string; message?: string }
        name = parsed.error ?? name
        message = parsed.message ?? text
      } catch {
        // Not JSON: keep the text.
      }
      throw new ApiError(response.status, name, `${method} ${path}: ${response.status} ${name}: ${message}`)
    }
    return response
  }

  async getJson<T>(path: string, options: { signal?: AbortSignal } = {}): Promise<T> {
    return (await (await this.request('GET', path, options)).json()) as T
  }
}
