/**
 * Memory soak (ARCHITECTURE §11: "memory flat (±10 %) over a 10-minute soak at 10k records/s"),
 * run by hand, not in CI:
 *
 *   bun scripts/soak.ts [--minutes N] [--rate R] [--interval S] [--warmup S] [--stream-max SIZE]
 *
 * The federation suite's setup: two compiled nodes (dist/oe-node, or OE_BENCH_BINARY) on
 * loopback, peered, one agreement for `telemetry:kinds=meter;quantities=power`; 128-byte
 * telemetry published at R records/s (default 10,000) into the provider's NATS and counted on the
 * consumer's `oe.peer.>`. Every S seconds (default 10) it samples VmRSS from /proc/<pid>/status of
 * each node and of its nats-server child, prints a row, and at the end a summary per process and
 * per node (node + nats-server): first / last / min / max, and the drift: the median of the last
 * minute of samples against the median of the first (garbage collection saws RSS by ±15 %, so
 * single samples would measure the saw, not a trend). The window starts after a warm-up (default
 * 60 s, not part of the N minutes), so start-up growth (JIT, buffers, the streams' first blocks)
 * does not count as drift. Open file descriptors are sampled with RSS. Writes
 * bench-results/soak.json. Exit code 0 when each of the four processes' RSS and open file
 * descriptors, and each node's total (node + its nats-server), drift by at most ±10 % and the
 * consumer kept up; 1 otherwise, 2 on bad usage.
 *
 * The nats-servers' RSS grows while OE_TEL and OE_PEER fill up to their size limit (1 GiB each by
 * default, reached after about 7 and 10 minutes at 10k records/s); `--stream-max 256MiB` sets both
 * limits on both nodes (OE_NODE_STREAMS_TELEMETRY_MAX_BYTES / …_PEER_MAX_BYTES) so that the
 * streams are in their steady state (full, discarding the oldest) early in the run.
 */
import { readdirSync, readFileSync } from 'node:fs'
import { mkdir, writeFile } from 'node:fs/promises'
import { join, relative } from 'node:path'
import { jetstreamManager } from '@nats-io/jetstream'
import { log, machine, markdownTable, median, resultsDir, root, rssKiB, Scope } from './bench/common.ts'
import {
  connectNode,
  ensureBinary,
  LATENCY_RATE,
  openAgreement,
  Pacer,
  peerNodes,
  Receiver,
  startNode,
  stopNode,
} from './bench/federation.ts'

interface Options {
  minutes: number
  rate: number
  intervalS: number
  warmupS: number
  /** Size limit of OE_TEL and OE_PEER on both nodes (a config size, e.g. 256MiB). */
  streamMax?: string
}

const DRIFT_LIMIT_PCT = 10

function usage(): string {
  return 'usage: bun scripts/soak.ts [--minutes N (10)] [--rate RECORDS_PER_S (10000)] [--interval S (10)] [--warmup S (60)] [--stream-max SIZE (node default)]'
}

function parseOptions(args: string[]): Options {
  const options: Options = { minutes: 10, rate: LATENCY_RATE, intervalS: 10, warmupS: 60 }
  const keys: Record<string, 'minutes' | 'rate' | 'intervalS' | 'warmupS'> = {
    '--minutes': 'minutes',
    '--rate': 'rate',
    '--interval': 'intervalS',
    '--warmup': 'warmupS',
  }
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!
    if (arg === '-h' || arg === '--help') {
      console.log(usage())
      process.exit(0)
    }
    const [flag, inline] = arg.split('=', 2) as [string, string | undefined]
    if (flag === '--stream-max') {
      const size = inline ?? args[++i]
      if (!size || !/^\d+(\.\d+)?\s*([KMGT]i?B|B)?$/i.test(size)) {
        console.error(`soak: bad size '${size}' for --stream-max (e.g. 256MiB)\n${usage()}`)
        process.exit(2)
      }
      options.streamMax = size
      continue
    }
    const key = keys[flag]
    const value = Number(inline ?? args[++i])
    if (!key || !Number.isFinite(value) || value < 0 || (key !== 'warmupS' && value === 0)) {
      console.error(`soak: bad argument '${arg}'\n${usage()}`)
      process.exit(2)
    }
    options[key] = value
  }
  return options
}

/** Open file descriptors of a process (0 when unreadable). */
function fdCount(pid: number): number {
  try {
    return readdirSync(`/proc/${pid}/fd`).length
  } catch {
    return 0
  }
}

/** Direct children of a process (every thread's `children` list). */
function childrenOf(pid: number): number[] {
  const children = new Set<number>()
  try {
    for (const task of readdirSync(`/proc/${pid}/task`)) {
      const text = readFileSync(`/proc/${pid}/task/${task}/children`, 'utf8').trim()
      for (const child of text.split(/\s+/).filter(Boolean)) children.add(Number(child))
    }
  } catch {
    // Gone, or no permission: the pid file still names the nats-server.
  }
  return [...children]
}

interface Sample {
  t_s: number
  sent: number
  received: number
  rss_kib: Record<string, number>
  /** Open file descriptors (entries of /proc/<pid>/fd). */
  fds: Record<string, number>
  stream_mib: { provider_OE_TEL: number; consumer_OE_PEER: number }
}

interface Summary {
  first_kib: number
  last_kib: number
  min_kib: number
  max_kib: number
  /** Medians of the first and of the last minute of samples (garbage collection saws RSS). */
  first_minute_median_kib: number
  last_minute_median_kib: number
  /** (last-minute median − first-minute median) / first-minute median. */
  drift_pct: number
  /** The largest distance of one sample from the first-minute median. */
  max_deviation_pct: number
}

function summarise(values: number[], perMinute: number): Summary {
  const head = median(values.slice(0, perMinute))
  const tail = median(values.slice(-perMinute))
  const pct = (value: number): number => Math.round(((value - head) / head) * 10_000) / 100
  return {
    first_kib: values[0]!,
    last_kib: values[values.length - 1]!,
    min_kib: Math.min(...values),
    max_kib: Math.max(...values),
    first_minute_median_kib: head,
    last_minute_median_kib: tail,
    drift_pct: pct(tail),
    max_deviation_pct: Math.max(...values.map((value) => Math.abs(pct(value)))),
  }
}

const mib = (kib: number): string => (kib / 1024).toFixed(1)

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2))
  const scope = new Scope()
  const onSignal = (signal: NodeJS.Signals): void => {
    log(`${signal}: cleaning up`)
    void scope.close().finally(() => process.exit(130))
  }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  try {
    await ensureBinary()
    const work = await scope.tempDir('soak')
    const env: Record<string, string> = options.streamMax
      ? {
          OE_NODE_STREAMS_TELEMETRY_MAX_BYTES: options.streamMax,
          OE_NODE_STREAMS_PEER_MAX_BYTES: options.streamMax,
        }
      : {}
    const [provider, consumer] = await Promise.all([
      startNode(scope, 'provider', join(work, 'provider'), join(work, 'provider.log'), env),
      startNode(scope, 'consumer', join(work, 'consumer'), join(work, 'consumer.log'), env),
    ])
    await peerNodes(provider, consumer)
    const id = await openAgreement(provider, consumer, 'soak')
    const publisher = await connectNode(provider, 'oe-soak-publisher')
    scope.defer('close the publisher connection', () => publisher.close())
    const subscriber = await connectNode(consumer, 'oe-soak-subscriber')
    scope.defer('close the subscriber connection', () => subscriber.close())
    const providerStreams = await jetstreamManager(publisher)
    const consumerStreams = await jetstreamManager(subscriber)
    const receiver = new Receiver(subscriber, 'oe.peer.>')
    await subscriber.flush()

    const nats = (node: typeof provider): number[] => [
      ...new Set([node.natsPid, ...childrenOf(node.child.pid)]),
    ]
    const processes: Record<string, number[]> = {
      provider_node: [provider.child.pid],
      provider_nats: nats(provider),
      consumer_node: [consumer.child.pid],
      consumer_nats: nats(consumer),
    }
    log(
      `agreement ${id.slice(0, 12)}: ${options.rate.toLocaleString('en-US')} records/s for ${options.warmupS} s of warm-up + ${options.minutes} min; RSS every ${options.intervalS} s`,
    )
    const pacer = new Pacer(publisher, options.rate)
    scope.defer('stop publishing', () => void pacer.stop())
    const started = performance.now()
    const totalS = options.warmupS + options.minutes * 60
    const samples: Sample[] = []
    const headers = [
      't (s)',
      'sent',
      'received',
      'lag',
      'provider node',
      '+ nats',
      'consumer node',
      '+ nats',
      'OE_TEL / OE_PEER',
      'fds p/pn/c/cn',
    ]
    const widths = headers.map((header) => Math.max(header.length, 15))
    const line = (cells: string[]): string =>
      `| ${cells.map((cell, i) => cell.padEnd(widths[i]!)).join(' | ')} |`
    console.log(`\n${line(headers)}\n${line(widths.map((width) => '-'.repeat(width)))}`)
    for (let tick = 0; tick * options.intervalS <= totalS; tick++) {
      await Bun.sleep(Math.max(0, started + tick * options.intervalS * 1000 - performance.now()))
      for (const node of [provider, consumer]) {
        if (!node.child.running) throw new Error(`oe-node ${node.name} exited: ${node.child.tail()}`)
      }
      const rss = Object.fromEntries(
        Object.entries(processes).map(([name, pids]) => [
          name,
          pids.reduce((sum, pid) => sum + rssKiB(pid), 0),
        ]),
      )
      const fds = Object.fromEntries(
        Object.entries(processes).map(([name, pids]) => [
          name,
          pids.reduce((sum, pid) => sum + fdCount(pid), 0),
        ]),
      )
      const [tel, peer] = await Promise.all([
        providerStreams.streams.info('OE_TEL'),
        consumerStreams.streams.info('OE_PEER'),
      ])
      const sample: Sample = {
        t_s: tick * options.intervalS,
        sent: pacer.sent,
        received: receiver.count,
        rss_kib: rss,
        fds,
        stream_mib: {
          provider_OE_TEL: Math.round(tel.state.bytes / 1024 / 102.4) / 10,
          consumer_OE_PEER: Math.round(peer.state.bytes / 1024 / 102.4) / 10,
        },
      }
      samples.push(sample)
      const warm = sample.t_s < options.warmupS ? ' (warm-up)' : ''
      console.log(
        line([
          `${sample.t_s}${warm}`,
          sample.sent.toLocaleString('en-US'),
          sample.received.toLocaleString('en-US'),
          (sample.sent - sample.received).toLocaleString('en-US'),
          `${mib(rss.provider_node!)} MiB`,
          `${mib(rss.provider_nats!)} MiB`,
          `${mib(rss.consumer_node!)} MiB`,
          `${mib(rss.consumer_nats!)} MiB`,
          `${sample.stream_mib.provider_OE_TEL} / ${sample.stream_mib.consumer_OE_PEER} MiB`,
          Object.values(fds).join('/'),
        ]),
      )
    }
    const sent = await pacer.stop()
    // Whatever is still in flight arrives within a few seconds when the consumer kept up.
    const drained = await receiver.waitCount(sent, 'soak drain', { budgetMs: 30_000 }).catch(() => false)
    await Promise.all([publisher.close(), subscriber.close()])
    await Promise.all([stopNode(provider), stopNode(consumer)])

    const measured = samples.filter((sample) => sample.t_s >= options.warmupS)
    const series = (pick: (sample: Sample) => number): number[] => measured.map(pick)
    const summary: Record<string, Summary> = {}
    const perMinute = Math.max(1, Math.round(60 / options.intervalS))
    if (measured.length < 2 * perMinute)
      log('warning: under two minutes measured: the first and the last minute overlap, so drift means little')
    for (const name of Object.keys(processes))
      summary[name] = summarise(
        series((s) => s.rss_kib[name]!),
        perMinute,
      )
    summary.provider_total = summarise(
      series((s) => s.rss_kib.provider_node! + s.rss_kib.provider_nats!),
      perMinute,
    )
    summary.consumer_total = summarise(
      series((s) => s.rss_kib.consumer_node! + s.rss_kib.consumer_nats!),
      perMinute,
    )
    const fdSummary: Record<string, Summary> = {}
    for (const name of Object.keys(processes))
      fdSummary[name] = summarise(
        series((s) => s.fds[name]!),
        perMinute,
      )
    const within = (s: Summary): boolean => Math.abs(s.drift_pct) <= DRIFT_LIMIT_PCT
    // Each of the four processes: RSS and open file descriptors flat within ±10 %.
    const ok =
      Object.keys(processes).every((name) => within(summary[name]!) && within(fdSummary[name]!)) &&
      within(summary.provider_total) &&
      within(summary.consumer_total) &&
      drained
    console.log(
      `\n${markdownTable(
        [
          'process',
          'first',
          'last',
          'min',
          'max',
          'first-minute median',
          'last-minute median',
          'drift',
          'max deviation',
        ],
        Object.entries(summary).map(([name, s]) => [
          name,
          `${mib(s.first_kib)} MiB`,
          `${mib(s.last_kib)} MiB`,
          `${mib(s.min_kib)} MiB`,
          `${mib(s.max_kib)} MiB`,
          `${mib(s.first_minute_median_kib)} MiB`,
          `${mib(s.last_minute_median_kib)} MiB`,
          `${s.drift_pct > 0 ? '+' : ''}${s.drift_pct} %${within(s) ? ' ok' : ' MISSED'}`,
          `${s.max_deviation_pct} %`,
        ]),
      )}\n`,
    )
    console.log(
      `${markdownTable(
        [
          'process',
          'open fds first',
          'last',
          'min',
          'max',
          'first-minute median',
          'last-minute median',
          'drift',
        ],
        Object.entries(fdSummary).map(([name, s]) => [
          name,
          String(s.first_kib),
          String(s.last_kib),
          String(s.min_kib),
          String(s.max_kib),
          String(s.first_minute_median_kib),
          String(s.last_minute_median_kib),
          `${s.drift_pct > 0 ? '+' : ''}${s.drift_pct} %${within(s) ? ' ok' : ' MISSED'}`,
        ]),
      )}\n`,
    )
    log(
      `${sent.toLocaleString('en-US')} records sent, ${receiver.count.toLocaleString('en-US')} received${drained ? '' : ' (the consumer did NOT keep up)'}; RSS and fds ${ok ? 'flat' : 'NOT flat'} within ±${DRIFT_LIMIT_PCT} %`,
    )
    const result = {
      suite: 'soak',
      when: new Date().toISOString(),
      machine: machine(),
      options: {
        minutes: options.minutes,
        rate: options.rate,
        interval_s: options.intervalS,
        warmup_s: options.warmupS,
        stream_max: options.streamMax ?? 'node default (1GiB)',
      },
      sent,
      received: receiver.count,
      kept_up: drained,
      drift_limit_pct: DRIFT_LIMIT_PCT,
      ok,
      summary,
      fds: fdSummary,
      samples,
    }
    await mkdir(resultsDir, { recursive: true })
    const path = join(resultsDir, 'soak.json')
    await writeFile(path, `${JSON.stringify(result, null, 2)}\n`)
    log(`wrote ${relative(root, path)}`)
    return ok ? 0 : 1
  } catch (error) {
    log(`soak FAILED: ${(error as Error).stack ?? error}`)
    return 1
  } finally {
    await scope.close()
  }
}

process.exit(await main())
