/**
 * Build the single executable `dist/oe-node` with `bun build --compile`.
 * When a nats-server >= 2.10 is found at build time (OE_NODE_EMBED_NATS=path, else the one
 * scripts/setup cached in .cache/nats-server/, else PATH), it is embedded, so the binary runs on
 * hosts without one; OE_NODE_EMBED_NATS=none leaves it out.
 */
import { chmod, mkdir, stat } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import type { BunPlugin } from 'bun'
import { isVersionAtLeast, natsServerVersion } from '../data-plane/index.ts'

const root = resolve(import.meta.dir, '..')
const outfile = join(root, 'dist', 'oe-node')

async function findNatsServer(): Promise<string | undefined> {
  const requested = process.env.OE_NODE_EMBED_NATS
  if (requested === 'none') return undefined
  // scripts/setup caches a newer nats-server from Debian unstable when it can (fetch-nats-server).
  const cached = join(root, '.cache', 'nats-server', 'nats-server')
  const candidate =
    requested ??
    ((await Bun.file(cached).exists()) ? cached : undefined) ??
    Bun.which('nats-server') ??
    undefined
  if (!candidate) return undefined
  try {
    const version = await natsServerVersion(candidate)
    if (isVersionAtLeast(version)) return candidate
    console.warn(`build: ${candidate} is nats-server ${version} (< 2.10): not embedding it`)
  } catch (error) {
    console.warn(`build: cannot run ${candidate}: ${(error as Error).message}`)
  }
  if (requested) process.exit(1)
  return undefined
}

const natsServer = await findNatsServer()

const embedNats: BunPlugin = {
  name: 'embed-nats-server',
  setup(build) {
    build.onLoad({ filter: /data-plane[\\/]embedded-nats\.ts$/ }, () => ({
      loader: 'ts',
      contents: natsServer
        ? `import path from ${JSON.stringify(natsServer)} with { type: 'file' }\nexport const embeddedNatsServerPath: string | null = path\n`
        : 'export const embeddedNatsServerPath: string | null = null\n',
    }))
  },
}

// ink loads react-devtools-core lazily; it has no place in the binary.
const stubDevtools: BunPlugin = {
  name: 'stub-react-devtools',
  setup(build) {
    build.onResolve({ filter: /^react-devtools-core$/ }, () => ({
      path: 'react-devtools-core',
      namespace: 'stub',
    }))
    build.onLoad({ filter: /.*/, namespace: 'stub' }, () => ({
      loader: 'js',
      contents: 'export default { initialize() {}, connectToDevTools() {} }',
    }))
  },
}

await mkdir(join(root, 'dist'), { recursive: true })
const started = performance.now()
const result = await Bun.build({
  entrypoints: [join(root, 'cli', 'main.ts')],
  compile: { outfile },
  minify: true,
  target: 'bun',
  // React's production build in the binary (the terminal UI); nothing else reads NODE_ENV.
  define: { 'process.env.NODE_ENV': JSON.stringify('production') },
  plugins: [embedNats, stubDevtools],
})
if (!result.success) {
  for (const message of result.logs) console.error(message)
  process.exit(1)
}
await chmod(outfile, 0o755)
const { size } = await stat(outfile)
console.log(
  `built ${outfile} (${(size / 1024 / 1024).toFixed(1)} MiB, ${Math.round(performance.now() - started)} ms)` +
    (natsServer ? `, embedding ${natsServer}` : ', no nats-server embedded'),
)
