/**
 * A webhook sender: POSTs JSON to subscribers' callback URLs, a few at a time, retrying what
 * failed for a reason that may pass (network error, time-out, 408, 429, 5xx) with exponential
 * back-off (1 s, 2 s, 4 s, … at most `maxBackoffMs`; a 429/503 `Retry-After` is honoured within
 * that bound), and giving up after `attempts`. Other 4xx answers are final. Nothing here knows
 * OpenADR: any plugin that notifies subscribers can use it.
 */
import type { Logger } from '../../data-plane/index.ts'

export interface WebhookDelivery {
  url: string
  body: unknown
  bearerToken?: string | undefined
  /** For logs: what this delivery is about. */
  label?: string
}

export interface WebhookSenderInit {
  attempts: number
  timeoutMs: number
  firstBackoffMs?: number
  maxBackoffMs?: number
  concurrency?: number
  /** Deliveries waiting beyond this are dropped (oldest first) so memory stays bounded. */
  maxQueued?: number
}

export interface WebhookSenderComponents {
  logger: Logger
  onResult?(
    delivery: WebhookDelivery,
    outcome: { delivered: boolean; attempts: number; status?: number },
  ): void
}

interface Queued {
  delivery: WebhookDelivery
  attempt: number
}

export class WebhookSender {
  private readonly queue: Queued[] = []
  private running = 0
  private readonly timers = new Set<ReturnType<typeof setTimeout>>()
  private readonly abort = new AbortController()
  private stopped = false

  constructor(
    private readonly init: WebhookSenderInit,
    private readonly components: WebhookSenderComponents,
  ) {}

  /** Queue a delivery (returns at once). */
  send(delivery: WebhookDelivery): void {
    if (this.stopped) return
    this.enqueue({ delivery, attempt: 0 })
  }

  /** Deliveries queued, in flight or waiting for a retry. */
  pending(): number {
    return this.queue.length + this.running + this.timers.size
  }

  async stop(): Promise<void> {
    this.stopped = true
    this.abort.abort()
    for (const timer of this.timers) clearTimeout(timer)
    this.timers.clear()
    this.queue.length = 0
  }

  private enqueue(item: Queued): void {
    this.queue.push(item)
    const max = this.init.maxQueued ?? 10_000
    while (this.queue.length > max) {
      const dropped = this.queue.shift()!
      this.components.logger.warn(
        { url: redact(dropped.delivery.url) },
        'webhook queue full: delivery dropped',
      )
      this.components.onResult?.(dropped.delivery, { delivered: false, attempts: dropped.attempt })
    }
    this.pump()
  }

  private pump(): void {
    const concurrency = this.init.concurrency ?? 16
    while (!this.stopped && this.running < concurrency && this.queue.length > 0) {
      const item = this.queue.shift()!
      this.running += 1
      void this.attempt(item).finally(() => {
        this.running -= 1
        this.pump()
      })
    }
  }

  private async attempt(item: Queued): Promise<void> {
    const { delivery } = item
    item.attempt += 1
    let status: number | undefined
    let retryAfterMs: number | undefined
    let retry = true
    try {
      const headers: Record<string, string> = { 'content-type': 'application/json' }
      if (delivery.bearerToken) headers.authorization = `Bearer ${delivery.bearerToken}`
      const response = await fetch(delivery.url, {
        method: 'POST',
        headers,
        body: JSON.stringify(delivery.body),
        redirect: 'manual',
        signal: AbortSignal.any([this.abort.signal, AbortSignal.timeout(this.init.timeoutMs)]),
      })
      status = response.status
      await response.body?.cancel().catch(() => {})
      if (status >= 200 && status < 300) {
        this.components.onResult?.(delivery, { delivered: true, attempts: item.attempt, status })
        return
      }
      retry = status === 408 || status === 429 || status >= 500
      const header = response.headers.get('retry-after')
      if (header && /^\d{1,6}$/.test(header)) retryAfterMs = Number(header) * 1000
    } catch (error) {
      if (this.stopped) return
      this.components.logger.debug(
        { url: redact(delivery.url), err: (error as Error).message, attempt: item.attempt },
        'webhook attempt failed',
      )
    }
    if (this.stopped) return
    if (!retry || item.attempt >= this.init.attempts) {
      this.components.logger.warn(
        { url: redact(delivery.url), status, attempts: item.attempt, what: delivery.label },
        'webhook not delivered',
      )
      this.components.onResult?.(delivery, {
        delivered: false,
        attempts: item.attempt,
        ...(status ? { status } : {}),
      })
      return
    }
    const max = this.init.maxBackoffMs ?? 60_000
    const backoff = Math.min(max, (this.init.firstBackoffMs ?? 1000) * 2 ** (item.attempt - 1))
    const wait = Math.min(max, Math.max(backoff, retryAfterMs ?? 0))
    const timer = setTimeout(() => {
      this.timers.delete(timer)
      this.enqueue(item)
    }, wait)
    timer.unref?.()
    this.timers.add(timer)
  }
}

/** A URL without credentials or query (logs never carry secrets). */
export function redact(url: string): string {
  try {
    const parsed = new URL(url)
    return `${parsed.protocol}//${parsed.host}${parsed.pathname}`
  } catch {
    return '(invalid url)'
  }
}
