/**
 * The receiving half of the federation suite's raw js-libp2p baseline, run as its own process:
 * `bun scripts/bench/libp2p-peer.ts`. A libp2p node configured like the product's host (TCP,
 * Noise with the node's ChaCha20-Poly1305, Yamux) listens on loopback, prints
 * `{"addr": "<multiaddr>"}` on one line, and on each `/oe-bench/raw/1.0.0` stream counts the
 * length-prefixed messages it reads until the sender closes its side, then answers with the
 * count (one length-prefixed UTF-8 number) and closes. The sender is the suite itself.
 */
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { tcp } from '@libp2p/tcp'
import { createLibp2p, type Libp2p } from 'libp2p'
import { type NoiseCryptoChoice, noiseCrypto } from '../../federation/noise-crypto.ts'

export const RAW_PROTOCOL = '/oe-bench/raw/1.0.0'

/**
 * A libp2p node like `federation/host.ts` builds, without identify, ping or gating, and with the
 * same Noise cipher as the nodes of the run (OE_BENCH_NOISE_CRYPTO, else the default "auto").
 */
export function rawNode(listen: string[] = []): Promise<Libp2p> {
  const choice = (process.env.OE_BENCH_NOISE_CRYPTO ?? 'auto') as NoiseCryptoChoice
  return createLibp2p({
    addresses: { listen },
    transports: [tcp()],
    connectionEncrypters: [noise({ crypto: noiseCrypto(choice).crypto })],
    streamMuxers: [yamux()],
  })
}

/** Counts unsigned-varint length-prefixed messages across chunk boundaries without copying. */
export class MessageCounter {
  count = 0
  /** Bytes of the current message still to skip; -1 while reading a length prefix. */
  private remaining = -1
  private length = 0
  private shift = 1

  push(chunk: Uint8Array): void {
    let index = 0
    while (index < chunk.length) {
      if (this.remaining < 0) {
        const byte = chunk[index++]!
        this.length += (byte & 0x7f) * this.shift
        this.shift *= 128
        if (byte < 0x80) {
          this.remaining = this.length
          this.length = 0
          this.shift = 1
          if (this.remaining === 0) this.complete()
        }
        continue
      }
      const take = Math.min(this.remaining, chunk.length - index)
      index += take
      this.remaining -= take
      if (this.remaining === 0) this.complete()
    }
  }

  private complete(): void {
    this.count += 1
    this.remaining = -1
  }
}

async function main(): Promise<void> {
  const node = await rawNode(['/ip4/127.0.0.1/tcp/0'])
  await node.handle(
    RAW_PROTOCOL,
    async (stream) => {
      const counter = new MessageCounter()
      for await (const chunk of stream) {
        if (chunk instanceof Uint8Array) counter.push(chunk)
        else for (const part of chunk) counter.push(part)
      }
      const text = new TextEncoder().encode(String(counter.count))
      stream.send(Uint8Array.of(text.length, ...text))
      await stream.close()
    },
    { maxInboundStreams: 8 },
  )
  console.log(JSON.stringify({ addr: node.getMultiaddrs()[0]!.toString() }))
  const stop = (): void => {
    void Promise.resolve(node.stop()).finally(() => process.exit(0))
  }
  process.once('SIGTERM', stop)
  process.once('SIGINT', stop)
}

if (import.meta.main) await main()
