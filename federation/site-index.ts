/**
 * Which site each resource belongs to, from the standing data in KV `oe-resources`, kept
 * current by a watch. Grants limited to sites are checked against it on the provider.
 */
import type { JetStreamClient } from '@nats-io/jetstream'
import { Kvm } from '@nats-io/kv'
import { decodeCbor, RESOURCES_BUCKET, type Resource } from '../data-plane/index.ts'

export class SiteIndex {
  private readonly sites = new Map<string, string>()
  private stopWatch: (() => void) | undefined

  async start(js: JetStreamClient): Promise<void> {
    const kv = await new Kvm(js).open(RESOURCES_BUCKET)
    const watch = await kv.watch({ key: '>' })
    this.stopWatch = () => watch.stop()
    void (async () => {
      for await (const entry of watch) {
        if (entry.operation !== 'PUT') {
          this.sites.delete(entry.key)
          continue
        }
        try {
          const resource = decodeCbor(entry.value) as Resource
          if (typeof resource.site === 'string') this.sites.set(entry.key, resource.site)
          else this.sites.delete(entry.key)
        } catch {
          this.sites.delete(entry.key)
        }
      }
    })()
  }

  stop(): void {
    this.stopWatch?.()
  }

  siteOf = (kind: string, rid: string): string | undefined => this.sites.get(`${kind}.${rid}`)
}
