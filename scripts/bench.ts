/**
 * Benchmark runner (ARCHITECTURE §11): `bun scripts/bench.ts [SUITE…]` runs the named suites
 * (all when none is named), prints a markdown table per suite and a combined one at the end, and
 * writes `bench-results/<suite>.json`. Exit codes: 0 ok, 1 a suite failed, 2 usage.
 */
import { relative } from 'node:path'
import {
  log,
  markdownTable,
  root,
  Scope,
  type Suite,
  type SuiteResult,
  suiteTable,
  writeResult,
} from './bench/common.ts'

/** The suites, in the order they run by default; add `federation`, `ocpp`, … here. */
const SUITES: Record<string, { describe: string; load: () => Promise<Suite> }> = {
  ingest: {
    describe: 'cold start, HTTP ingest throughput vs raw nats.js JetStream publish',
    load: async () => (await import('./bench/ingest.ts')).ingestSuite,
  },
  agreements: {
    describe: 'two nodes on loopback: peer connect, propose/accept/revoke latency across nodes',
    load: async () => (await import('./bench/agreements.ts')).agreementsSuite,
  },
  federation: {
    describe:
      'two nodes on loopback: federated throughput, latency at 10k/s, revocation cut-off vs NATS/libp2p/leafnode',
    load: async () => (await import('./bench/federation.ts')).federationSuite,
  },
  ocpp: {
    describe:
      '500/1,000/2,000 OCPP 1.6 stations: MeterValues rate, CALL→CALLRESULT p99, burst, RSS per connection',
    load: async () => (await import('./bench/ocpp.ts')).ocppSuite,
  },
  openadr: {
    describe: 'VTN serving 1,000 VENs polling events every 10 s while 100 post reports each second: p99, RSS',
    load: async () => (await import('./bench/openadr.ts')).openadrSuite,
  },
  ocpi: {
    describe: 'OCPI CPO, 10,000 EVSEs, an eMSP: status change → PATCH p99 at 1,000/s, push and pull of all',
    load: async () => (await import('./bench/ocpi.ts')).ocpiSuite,
  },
  'scale-out': {
    describe:
      '3 replicas of one node on a 3-server NATS cluster: ingest with 1/2/3 replicas, takeover after kill -9 (p50, max)',
    load: async () => (await import('./bench/scale-out.ts')).scaleOutSuite,
  },
  'csip-aus': {
    describe:
      'CSIP-AUS client, 1,000 sites polling and posting every 60 s: control start → command p99, CPU, RSS',
    load: async () => (await import('./bench/csip-aus.ts')).csipAusSuite,
  },
}

function usage(): string {
  const lines = Object.entries(SUITES).map(([name, suite]) => `  ${name.padEnd(12)} ${suite.describe}`)
  return `usage: bun scripts/bench.ts [SUITE…]   (all suites when none is named)\n\nsuites:\n${lines.join('\n')}`
}

function parseArgs(args: readonly string[]): string[] {
  if (args.includes('-h') || args.includes('--help')) {
    console.log(usage())
    process.exit(0)
  }
  const unknown = args.filter((name) => !Object.hasOwn(SUITES, name))
  if (unknown.length > 0) {
    console.error(`bench: unknown suite${unknown.length > 1 ? 's' : ''}: ${unknown.join(', ')}\n\n${usage()}`)
    process.exit(2)
  }
  const chosen = args.length > 0 ? args : Object.keys(SUITES)
  return [...new Set(chosen)]
}

async function main(): Promise<number> {
  const names = parseArgs(process.argv.slice(2))
  const results: SuiteResult[] = []
  const failures: string[] = []
  for (const name of names) {
    const scope = new Scope()
    const onSignal = (signal: NodeJS.Signals): void => {
      log(`${signal}: cleaning up`)
      void scope.close().finally(() => process.exit(130))
    }
    process.once('SIGINT', onSignal)
    process.once('SIGTERM', onSignal)
    const started = performance.now()
    log(`suite ${name}`)
    try {
      const suite = await SUITES[name]!.load()
      const result = await suite(scope)
      const path = await writeResult(result)
      results.push(result)
      console.log(`\n## ${name}\n\n${suiteTable(result)}\n`)
      log(
        `suite ${name} done in ${((performance.now() - started) / 1000).toFixed(1)} s; wrote ${relative(root, path)}`,
      )
    } catch (error) {
      failures.push(name)
      log(`suite ${name} FAILED: ${(error as Error).stack ?? error}`)
    } finally {
      await scope.close()
      process.off('SIGINT', onSignal)
      process.off('SIGTERM', onSignal)
    }
  }
  if (results.length > 0) {
    const rows = results.flatMap((result) =>
      result.headline.map((row) => [result.suite, row.metric, row.value, row.reference]),
    )
    for (const name of failures) rows.push([name, 'FAILED', '', ''])
    console.log(`## all suites\n\n${markdownTable(['suite', 'metric', 'value', 'target/baseline'], rows)}`)
  }
  return failures.length > 0 ? 1 : 0
}

process.exit(await main())
