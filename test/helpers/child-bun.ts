/**
 * Run a snippet in a separate Bun process and get its `result` back as JSON. For code that may
 * crash the process (a crash inside the test worker would take every other test with it), such
 * as CBOR decoding, which must never reach cbor-x's native extractor (data-plane/cbor-setup.ts).
 */
import { spawnSync } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export interface ChildOutcome {
  status: number | null
  signal: NodeJS.Signals | null
  result: unknown
}

export interface ChildRun {
  /** Import lines the snippet needs. */
  imports: string[]
  /** Module code that assigns `result`. */
  body: string
  /**
   * true: run as shipped, with the variable that keeps cbor-x off its native addon unset, so
   * the code under test must keep it off by itself; false: set it, to test the logic alone.
   */
  nativeCbor: boolean
}

export async function inChildBun(run: ChildRun): Promise<ChildOutcome> {
  const dir = await mkdtemp(join(tmpdir(), 'oe-test-'))
  try {
    const script = join(dir, 'child.ts')
    const output = join(dir, 'result.json')
    await writeFile(
      script,
      [
        "import { writeFileSync } from 'node:fs'",
        ...run.imports,
        'let result: unknown',
        run.body,
        `writeFileSync(${JSON.stringify(output)}, JSON.stringify(result))`,
        '',
      ].join('\n'),
    )
    const env: NodeJS.ProcessEnv = { ...process.env }
    if (run.nativeCbor) delete env.CBOR_NATIVE_ACCELERATION_DISABLED
    else env.CBOR_NATIVE_ACCELERATION_DISABLED = 'true'
    const child = spawnSync(process.execPath, ['--no-install', script], {
      env,
      timeout: 60_000,
      stdio: 'ignore',
    })
    const written = await readFile(output, 'utf8').catch(() => undefined)
    return {
      status: child.status,
      signal: child.signal,
      result: written === undefined ? undefined : JSON.parse(written),
    }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}
