import type { Command } from 'commander'
import { type AuditVerifyResult, verifyAuditLog } from '../../federation/audit.ts'
import { dataDirPaths, loadIdentity, resolveDataDir } from '../../node/index.ts'
import { CommandFailedError } from '../errors.ts'
import { type GlobalOptions, report } from '../output.ts'

function verifyLines(result: AuditVerifyResult): string[] {
  if (result.ok)
    return [
      `audit log ok: ${result.entries} entries, ${result.checkpoints} checkpoints, ${result.receipts} transfer receipts`,
    ]
  const bad = result.firstBad!
  const seq = bad.seq === undefined ? '' : ` (seq ${bad.seq})`
  return [`audit log BROKEN at ${bad.file} line ${bad.line}${seq}: ${bad.reason}`]
}

export function registerAudit(program: Command): void {
  const audit = program
    .command('audit')
    .description("the node's hash-chained audit log of agreements, connections and batches")

  audit
    .command('verify')
    .description(
      "check the audit log offline: every hash and link of the chain, every checkpoint's signature by this node's key, and every transfer receipt's signature by the provider's key",
    )
    .addHelpText(
      'after',
      '\nExits 1 and names the first bad entry (file, line, seq, reason) when the log was altered or damaged.\n' +
        '\nExamples:\n  oe-node audit verify\n  oe-node audit verify --data-dir /srv/oe-node --json | jq .firstBad',
    )
    .action(async (_options: unknown, command: Command) => {
      const globals = command.optsWithGlobals<GlobalOptions>()
      const paths = dataDirPaths(resolveDataDir(globals.dataDir))
      // Offline on purpose: the key on disk, not a running node, vouches for the checkpoints.
      const identity = await loadIdentity(paths.key)
      const result = await verifyAuditLog(paths.audit, identity.publicKey)
      report(globals, result, verifyLines)
      if (!result.ok) throw new CommandFailedError(`the audit log in ${paths.audit} failed verification`)
    })
}
