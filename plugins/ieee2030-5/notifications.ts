/**
 * The client's notification listener (IEEE 2030.5 pub/sub): an HTTPS endpoint with the same
 * mutual TLS as the client (its certificate, and only servers whose certificate chains to the
 * configured CA may post), at `/csip-aus/notify/<site>`, where the utility server POSTs a
 * Notification when a subscribed resource changes. A notification only wakes the site's poll:
 * the client reads the resource through its own hrefs, so a forged or stale body cannot put a
 * control in force. Polling stays the fallback at the server's rates.
 */
import { createServer, type Server } from 'node:https'
import type { AddressInfo } from 'node:net'
import type { Logger } from '../../data-plane/index.ts'
import { parseXml } from './codec.ts'
import { decodeNotification, type Notification } from './sep.ts'

export const NOTIFY_PATH = '/csip-aus/notify/'

export interface NotificationListenerInit {
  host: string
  port: number
  cert: string
  key: string
  ca: string
  maxBodyBytes: number
}

export interface NotificationListenerComponents {
  logger: Logger
  onNotification(site: string, notification: Notification): void
}

export class NotificationListener {
  private server: Server | undefined

  constructor(
    private readonly init: NotificationListenerInit,
    private readonly components: NotificationListenerComponents,
  ) {}

  get port(): number {
    return (this.server?.address() as AddressInfo | null)?.port ?? 0
  }

  async start(): Promise<void> {
    const { logger } = this.components
    const server = createServer(
      {
        cert: this.init.cert,
        key: this.init.key,
        ca: this.init.ca,
        requestCert: true,
        rejectUnauthorized: true,
      },
      (req, res) => {
        const answer = (status: number) => {
          res.writeHead(status)
          res.end()
        }
        const url = new URL(req.url ?? '/', 'https://localhost')
        if (req.method !== 'POST' || !url.pathname.startsWith(NOTIFY_PATH)) {
          req.resume()
          return answer(404)
        }
        const site = decodeURIComponent(url.pathname.slice(NOTIFY_PATH.length))
        const chunks: Buffer[] = []
        let size = 0
        req.on('data', (chunk: Buffer) => {
          size += chunk.length
          if (size > this.init.maxBodyBytes) {
            answer(413)
            req.destroy()
            return
          }
          chunks.push(chunk)
        })
        req.on('end', () => {
          if (size > this.init.maxBodyBytes) return
          try {
            const parsed = parseXml(Buffer.concat(chunks).toString('utf8'), {
              maxBytes: this.init.maxBodyBytes,
            })
            if (parsed.root !== 'Notification') return answer(400)
            this.components.onNotification(site, decodeNotification(parsed.node))
            answer(204)
          } catch (error) {
            logger.warn(
              { site, name: (error as Error).name, err: (error as Error).message },
              'notification refused',
            )
            answer(400)
          }
        })
      },
    )
    server.on('tlsClientError', (error) => {
      logger.warn({ err: error.message }, 'notification sender refused (TLS)')
    })
    this.server = server
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(this.init.port, this.init.host, () => {
        server.off('error', reject)
        resolve()
      })
    })
    logger.info({ host: this.init.host, port: this.port }, 'listening for notifications')
  }

  async stop(): Promise<void> {
    const server = this.server
    this.server = undefined
    if (!server) return
    server.closeAllConnections?.()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  }
}
