/**
 * Control commands across an agreement (ARCHITECTURE §7). As the consumer: read `oe.send.>`
 * (OE_OUT), check each against an agreement with that peer holding a control grant for it, and
 * send it signed over `/oe/control/1.0.0`; the outcome comes back as a `control_result` event.
 * As the provider: verify the consumer's signature, check the grant again (bounds, sites) and
 * publish the command on `oe.ctl.<kind>.<rid>.<command>` for plugins. See `control.ts` for the
 * check both sides run.
 */
import { verify as cryptoVerify } from 'node:crypto'
import type { Connection, Stream } from '@libp2p/interface'
import { AckPolicy, DeliverPolicy, type JsMsg } from '@nats-io/jetstream'
import { nanos, headers as natsHeaders } from '@nats-io/nats-core'
import { closeConsumerMessages, type DataPlane, encodeCbor, type Logger } from '../data-plane/index.ts'
import type { Signer } from './agreement.ts'
import {
  CONTROL_PROTOCOL,
  checkControl,
  commandTimeProblem,
  controlBytes,
  parseControlCommand,
  parseSendSubject,
} from './control.ts'
import {
  AgreementFormatError,
  AgreementNotFoundError,
  AgreementStateError,
  BadSignatureError,
  FederationError,
  ForeignAgreementError,
} from './errors.ts'
import type { AuditSink } from './flows.ts'
import { readFrame, writeFrame } from './frames.ts'
import type { FederationHost } from './host.ts'
import { parseReply } from './messages.ts'
import { refuseStream } from './refuse.ts'
import type { AgreementRecord, PeerRecord } from './stores.ts'
import { publicKeyObject, remoteKey } from './transfer.ts'

export interface ControlRelayComponents {
  dataPlane: DataPlane
  logger: Logger
  audit: AuditSink
  signer: Signer
  agreements(): Iterable<AgreementRecord>
  agreement(id: string): AgreementRecord | undefined
  peer(alias: string): PeerRecord | undefined
  peerByPeerId(peerId: string): PeerRecord | undefined
  host(): FederationHost | undefined
  /** This node's resources' sites (as provider). */
  siteOf: (kind: string, rid: string) => string | undefined
  /** A provider's resources' sites, as its standing data under the agreement told this node. */
  providerSiteOf(id: string, kind: string, rid: string): string | undefined
}

export class ControlRelay {
  private loop: { stop(err?: Error): void; close(): Promise<unknown> } | undefined

  constructor(
    private readonly messageTimeoutMs: number,
    private readonly components: ControlRelayComponents,
  ) {}

  async stop(): Promise<void> {
    if (this.loop) await closeConsumerMessages(this.loop)
    this.loop = undefined
  }

  /** Read `oe.send.>` (OE_OUT) through a durable consumer and forward what agreements allow. */
  async start(): Promise<void> {
    const { dataPlane } = this.components
    const name = 'oe-control-out'
    await dataPlane.manager.consumers
      .add('OE_OUT', {
        durable_name: name,
        filter_subject: 'oe.send.>',
        ack_policy: AckPolicy.Explicit,
        deliver_policy: DeliverPolicy.New,
        ack_wait: nanos(30_000),
        max_deliver: -1,
      })
      .catch(async (error: Error) => {
        // It exists already (a restart): keep its position.
        if (!/already in use|exists/i.test(error.message)) throw error
      })
    const consumer = await dataPlane.jetstream.consumers.get('OE_OUT', name)
    const messages = await consumer.consume({ max_messages: 64 })
    this.loop = messages
    void (async () => {
      for await (const msg of messages) {
        await this.forwardControl(msg).catch((error: Error) => {
          this.components.logger.warn(
            { subject: msg.subject, err: error.message },
            'control forwarding failed',
          )
          msg.nak(2_000)
        })
      }
    })()
  }

  private async controlResult(
    alias: string,
    kind: string,
    rid: string,
    result: Record<string, unknown>,
  ): Promise<void> {
    await this.components.dataPlane.publishConfirmed([
      {
        subject: `oe.peer.${alias}.evt.${kind}.${rid}.control_result`,
        payload: encodeCbor({ ...result, at: Date.now() }),
      },
    ])
  }

  private async forwardControl(msg: JsMsg): Promise<void> {
    const target = parseSendSubject(msg.subject)
    if (!target) {
      await this.components.audit.append('control.refused', {
        subject: msg.subject,
        reason: 'not oe.send.<alias>.ctl.<kind>.<rid>.<command>',
      })
      msg.term()
      return
    }
    const { alias, kind, rid, command } = target
    const peer = this.components.peer(alias)
    const candidates = [...this.components.agreements()].filter(
      (r) => r.peer === alias && r.role === 'consumer',
    )
    let reason = peer ? `no agreement with ${alias} lets this node send ${command}` : `no peer named ${alias}`
    let chosen: AgreementRecord | undefined
    for (const record of candidates) {
      // The provider's sites as its standing data told them: a known site outside the grant is
      // refused here, an unknown one is the provider's to decide.
      const decision = checkControl(record, kind, rid, command, msg.data, Date.now(), {
        siteOf: (k, r) => this.components.providerSiteOf(record.id, k, r),
        ignoreSites: true,
      })
      if (decision.ok) {
        chosen = record
        break
      }
      reason = decision.reason
    }
    if (!peer || !chosen) {
      await this.components.audit.append('control.refused', {
        peer: alias,
        kind,
        rid,
        command,
        by: 'us',
        reason,
      })
      if (peer) await this.controlResult(alias, kind, rid, { command, ok: false, by: 'consumer', reason })
      msg.ack()
      return
    }
    const host = this.components.host()
    if (!host?.isConnected(peer.peerId)) {
      msg.nak(1_000)
      return
    }
    // When the application published it, not when it could be sent: the provider refuses a
    // command held back too long (commandTimeProblem).
    const at = Number(msg.timestampNanos / 1_000_000n)
    const stale = commandTimeProblem(at)
    if (stale) {
      await this.components.audit.append('control.refused', {
        peer: alias,
        kind,
        rid,
        command,
        by: 'us',
        reason: stale,
      })
      await this.controlResult(alias, kind, rid, { command, ok: false, by: 'consumer', reason: stale })
      msg.ack()
      return
    }
    const cmd = { id: chosen.id, kind, rid, command, payload: msg.data, at }
    const sig = new Uint8Array(this.components.signer.sign(controlBytes(cmd)))
    const signal = AbortSignal.timeout(this.messageTimeoutMs)
    const stream = await host.openStream(peer.peerId, CONTROL_PROTOCOL, { signal })
    await writeFrame(stream, { t: 'control', cmd, sig }, { signal })
    await stream.close({ signal })
    const reply = parseReply(await readFrame(stream, { signal }))
    if (reply.ok) {
      await this.components.audit.append('control.sent', { id: chosen.id, peer: alias, kind, rid, command })
      await this.controlResult(alias, kind, rid, { command, ok: true, id: chosen.id })
    } else {
      await this.components.audit.append('control.refused', {
        id: chosen.id,
        peer: alias,
        kind,
        rid,
        command,
        by: 'peer',
        reason: reply.message,
      })
      await this.controlResult(alias, kind, rid, {
        command,
        ok: false,
        by: 'provider',
        reason: reply.message,
        id: chosen.id,
      })
    }
    msg.ack()
  }

  async onControlStream(stream: Stream, connection: Connection): Promise<void> {
    const peer = this.components.peerByPeerId(connection.remotePeer.toString())
    if (!peer) {
      stream.abort(new FederationError('unknown peer'))
      return
    }
    let frame: { t?: unknown; cmd?: unknown; sig?: unknown }
    try {
      frame = (await readFrame(stream, { signal: AbortSignal.timeout(10_000) })) as typeof frame
    } catch (error) {
      void this.components.audit.append('protocol.bad_frame', {
        peer: peer.alias,
        protocol: 'control',
        reason: (error as Error).message,
      })
      stream.abort(error as Error)
      return
    }
    try {
      if (frame?.t !== 'control' || !(frame.sig instanceof Uint8Array))
        throw new AgreementFormatError('t', 'expected a control frame')
      const cmd = parseControlCommand(frame.cmd)
      const record = this.components.agreement(cmd.id)
      if (!record) throw new AgreementNotFoundError(cmd.id)
      if (record.peer !== peer.alias || record.role !== 'provider') {
        throw new ForeignAgreementError(
          `agreement ${cmd.id} does not let ${peer.alias} control this node's resources`,
        )
      }
      // Signed by the key the connection is authenticated with: the consumer's key in force
      // (its successor after a key rotation), which the peer directory ties to this agreement.
      const signerKey = remoteKey(connection.remotePeer) ?? record.doc.body.consumer.key
      if (!cryptoVerify(null, controlBytes(cmd), publicKeyObject(signerKey), frame.sig)) {
        throw new BadSignatureError('the control command is not signed by the consumer')
      }
      const stale = commandTimeProblem(cmd.at)
      if (stale) throw new AgreementStateError(stale)
      const decision = checkControl(record, cmd.kind, cmd.rid, cmd.command, cmd.payload, Date.now(), {
        siteOf: this.components.siteOf,
      })
      if (!decision.ok) throw new AgreementStateError(decision.reason)
      const headers = natsHeaders()
      headers.set('Oe-Agreement', cmd.id)
      headers.set('Oe-From', peer.alias)
      await this.components.dataPlane.publishConfirmed([
        { subject: `oe.ctl.${cmd.kind}.${cmd.rid}.${cmd.command}`, payload: cmd.payload, headers },
      ])
      await this.components.audit.append('control.received', {
        id: cmd.id,
        peer: peer.alias,
        kind: cmd.kind,
        rid: cmd.rid,
        command: cmd.command,
      })
      await writeFrame(stream, { ok: true })
      await stream.close()
    } catch (error) {
      await refuseStream(
        stream,
        { peer: peer.alias, error: error as Error, auditType: 'control.refused' },
        this.components,
      )
    }
  }
}
