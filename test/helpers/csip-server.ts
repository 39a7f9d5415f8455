/**
 * A 2030.5 / CSIP-AUS utility server for tests: a real HTTPS listener that demands a client
 * certificate from the test CA, serving resources in the layout the CACTUS procedures name
 * (envoy's: /dcap, /tm, /edev/1/fsa/1/derp, /edev/1/derp/1/derc, /edev/1/rsps/site_control/rsp,
 * /mup …), modelled on the captured responses of real servers. A small engine runs a CACTUS
 * client procedure (cactus/client/*.yaml): preconditions, steps enabled and removed by events
 * (requests received, waits), actions (controls, defaults, programs, comms rates, outages) and
 * the criteria checks — with time compressed by `scale` (60 → a minute of the procedure takes a
 * second) so each runs in seconds.
 */
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { createServer, request as httpsRequest, type Server } from 'node:https'
import type { AddressInfo, Socket } from 'node:net'
import { join } from 'node:path'
import { parseXml, type XmlNode } from '../../plugins/ieee2030-5/codec.ts'
import { lfdiFromCertificate } from '../../plugins/ieee2030-5/identity.ts'
import { TESTDATA } from './testdata.ts'

export const CSIP_TESTDATA = join(TESTDATA, 'csip-aus')
const SEP = 'urn:ieee:std:2030.5:ns'

// ── PKI ─────────────────────────────────────────────────────────────────────────────────────────

export interface Pki {
  dir: string
  ca: string
  serverCert: string
  serverKey: string
  clientCert: string
  clientKey: string
  /** Signed by another CA. */
  rogueCert: string
  rogueKey: string
  /** Signed by the test CA, expired yesterday. */
  expiredCert: string
}

/** CA, server (127.0.0.1) and client certificates (ECDSA P-256, as 2030.5 uses) made with openssl. */
export function makePki(dir: string): Pki {
  const run = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' })
  const key = (name: string) =>
    run('ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', `${name}.key`)
  const ca = (name: string) => {
    key(name)
    run(
      'req',
      '-x509',
      '-new',
      '-key',
      `${name}.key`,
      '-subj',
      `/CN=${name}`,
      '-days',
      '2',
      '-out',
      `${name}.pem`,
    )
  }
  const leaf = (name: string, issuer: string, ext: string, days = '2', out = `${name}.pem`) => {
    run('req', '-new', '-key', `${name}.key`, '-subj', `/CN=${name}`, '-out', `${name}.csr`)
    execFileSync('sh', ['-c', `printf '${ext}' > ${name}.ext`], { cwd: dir })
    run(
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      `${issuer}.pem`,
      '-CAkey',
      `${issuer}.key`,
      '-CAcreateserial',
      '-days',
      days,
      '-extfile',
      `${name}.ext`,
      '-out',
      out,
    )
  }
  ca('serca')
  ca('rogue-ca')
  key('server')
  leaf('server', 'serca', 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth,clientAuth\\n')
  key('client')
  leaf('client', 'serca', 'extendedKeyUsage=clientAuth,serverAuth\\n')
  leaf('client', 'serca', 'extendedKeyUsage=clientAuth,serverAuth\\n', '-1', 'expired.pem')
  key('rogue')
  leaf('rogue', 'rogue-ca', 'extendedKeyUsage=clientAuth,serverAuth\\n')
  const at = (file: string) => join(dir, file)
  return {
    dir,
    ca: at('serca.pem'),
    serverCert: at('server.pem'),
    serverKey: at('server.key'),
    clientCert: at('client.pem'),
    clientKey: at('client.key'),
    rogueCert: at('rogue.pem'),
    rogueKey: at('rogue.key'),
    expiredCert: at('expired.pem'),
  }
}

// ── server model ────────────────────────────────────────────────────────────────────────────────

export interface ServerControl {
  id: number
  mrid: string
  tag?: string
  program: number
  creationTime: number
  start: number
  duration: number
  randomizeStart?: number
  status: number
  base: Record<string, number | boolean>
}

export interface ServerProgram {
  id: number
  fsa: number
  primacy: number
  mrid: string
  defaultControl?: {
    mrid: string
    version: number
    base: Record<string, number | boolean>
    setGradW?: number
  }
}

export interface ReceivedRequest {
  method: string
  path: string
  body: string
  at: number
  node?: XmlNode
  root?: string
}

export interface CommsRates {
  dcap_poll_seconds?: number
  edev_list_poll_seconds?: number
  fsa_list_poll_seconds?: number
  der_list_poll_seconds?: number
  derp_list_poll_seconds?: number
  mup_post_seconds?: number
  edev_post_seconds?: number
}

export interface EndDeviceRecord {
  id: number
  lfdi: string
  sfdi: string
  pin?: number
  nmi?: string
  der: Record<'dercap' | 'derg' | 'ders' | 'dera', XmlNode | undefined>
}

export interface CsipTestServerInit {
  pki: Pki
  /** CSIP-AUS namespace to speak. */
  version?: 'v1.2' | 'v1.3'
  /** Server clock − real clock, seconds. */
  clockSkewS?: number
  /** Procedure seconds per real second (1: real time). */
  scale?: number
}

export class CsipTestServer {
  readonly requests: ReceivedRequest[] = []
  readonly devices: EndDeviceRecord[] = []
  readonly programs: ServerProgram[] = []
  readonly controls: ServerControl[] = []
  readonly responses: { subject: string; status: number; lfdi: string; at: number }[] = []
  readonly mirrors: { id: number; mrid: string; lfdi: string; roleFlags: string; readings: XmlNode[] }[] = []
  readonly subscriptions: XmlNode[] = []
  /** Notifications sent to subscribers: HTTP status, or 0 when the POST failed. */
  readonly notifications: { resource: string; status: number }[] = []
  /** The aggregator's own EndDevice (/edev/0, the client certificate's LFDI), where it subscribes. */
  readonly aggregatorLfdi: string
  /** List the aggregator's EndDevice (off for a device-mode client, whose certificate is the device). */
  aggregator = true
  rates: CommsRates = {}
  registrationLinks = true
  /** When false the server drops every connection (an outage). */
  online = true
  /** Extra EndDevices listed (a huge list). */
  padding = 0
  /** Serve this body (raw) instead of the resource for paths matching. */
  override: { match: RegExp; body: string } | undefined
  clockSkewS: number
  readonly scale: number
  private server: Server | undefined
  private readonly sockets = new Set<Socket>()
  private lastCreation = 0
  private readonly ns: string
  listeners: ((request: ReceivedRequest) => void)[] = []
  url = ''

  constructor(private readonly init: CsipTestServerInit) {
    this.clockSkewS = init.clockSkewS ?? 0
    this.scale = init.scale ?? 1
    this.ns = init.version === 'v1.3' ? 'https://csipaus.org/ns/v1.3' : 'https://csipaus.org/ns'
    this.aggregatorLfdi = lfdiFromCertificate(readFileSync(init.pki.clientCert, 'utf8'))
  }

  /** Tell every subscriber that something changed (over-notifying is harmless: clients re-read). */
  notifyAll(): void {
    const { pki } = this.init
    for (const [index, subscription] of this.subscriptions.entries()) {
      const resource = String(subscription.subscribedResource)
      const body = `<Notification xmlns="${SEP}"><subscribedResource>${resource}</subscribedResource><status>0</status><subscriptionURI>/edev/0/sub/${index + 1}</subscriptionURI></Notification>`
      const url = new URL(String(subscription.notificationURI))
      const entry = { resource, status: 0 }
      this.notifications.push(entry)
      const req = httpsRequest(
        url,
        {
          method: 'POST',
          cert: readFileSync(pki.serverCert),
          key: readFileSync(pki.serverKey),
          ca: readFileSync(pki.ca),
          // 2030.5 identifies devices by certificate (LFDI), not by host name.
          checkServerIdentity: () => undefined,
          headers: { 'content-type': 'application/sep+xml' },
        },
        (res) => {
          entry.status = res.statusCode ?? 0
          res.resume()
        },
      )
      req.on('error', () => {})
      req.end(body)
    }
  }

  async start(): Promise<string> {
    const { pki } = this.init
    const server = createServer(
      {
        cert: readFileSync(pki.serverCert),
        key: readFileSync(pki.serverKey),
        ca: readFileSync(pki.ca),
        requestCert: true,
        rejectUnauthorized: true,
      },
      (req, res) => {
        const chunks: Buffer[] = []
        req.on('data', (chunk: Buffer) => chunks.push(chunk))
        req.on('end', () => {
          if (!this.online) {
            req.socket.destroy()
            return
          }
          const url = new URL(req.url ?? '/', 'https://127.0.0.1')
          const request: ReceivedRequest = {
            method: req.method ?? 'GET',
            path: url.pathname,
            body: Buffer.concat(chunks).toString('utf8'),
            at: Date.now(),
          }
          if (request.body) {
            try {
              const parsed = parseXml(request.body)
              request.node = parsed.node
              request.root = parsed.root
            } catch {}
          }
          const answer = this.handle(request, url.searchParams)
          this.requests.push(request)
          for (const listener of this.listeners) listener(request)
          res.writeHead(answer.status, {
            'content-type': 'application/sep+xml',
            ...(answer.location ? { location: answer.location } : {}),
          })
          res.end(answer.body ?? '')
        })
      },
    )
    server.on('connection', (socket: Socket) => {
      this.sockets.add(socket)
      socket.on('close', () => this.sockets.delete(socket))
      if (!this.online) socket.destroy()
    })
    this.server = server
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    this.url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`
    return `${this.url}/dcap`
  }

  async stop(): Promise<void> {
    for (const socket of this.sockets) socket.destroy()
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()))
  }

  /** Cut every open connection (for outages: keep-alive sockets would otherwise stay up). */
  dropConnections(): void {
    for (const socket of this.sockets) socket.destroy()
  }

  /** Server time, epoch seconds. */
  now(): number {
    return Math.floor(Date.now() / 1000 + this.clockSkewS)
  }

  /** Procedure seconds → real seconds (at least 1). */
  scaled(seconds: number): number {
    if (seconds === 0) return 0
    return Math.max(1, Math.round(seconds / this.scale))
  }

  // ── model changes (what procedure actions do) ──────────────────────────────────────────────

  registerDevice(lfdi: string, sfdi: string, pin?: number): EndDeviceRecord {
    const device: EndDeviceRecord = {
      id: this.devices.length + 1,
      lfdi: lfdi.toUpperCase(),
      sfdi,
      ...(pin !== undefined ? { pin } : {}),
      der: { dercap: undefined, derg: undefined, ders: undefined, dera: undefined },
    }
    this.devices.push(device)
    return device
  }

  createProgram(primacy: number, fsa = 1): ServerProgram {
    const program: ServerProgram = {
      id: this.programs.length + 1,
      fsa,
      primacy,
      mrid: mrid('D0', this.programs.length + 1),
    }
    this.programs.push(program)
    this.notifyAll()
    return program
  }

  setDefaultControl(values: Record<string, number | boolean>, programId = 1): void {
    const program = this.programs.find((candidate) => candidate.id === programId) ?? this.createProgram(0)
    const previous = program.defaultControl
    const { setGradW, ...base } = values
    program.defaultControl = {
      mrid: mrid('DD', program.id * 1000 + (previous?.version ?? 0) + 1),
      version: (previous?.version ?? -1) + 1,
      base: { ...(previous?.base ?? {}), ...base },
      ...(typeof setGradW === 'number'
        ? { setGradW }
        : previous?.setGradW
          ? { setGradW: previous.setGradW }
          : {}),
    }
  }

  createControl(control: {
    start: number
    duration: number
    base: Record<string, number | boolean>
    tag?: string
    program?: number
    randomizeStart?: number
  }): ServerControl {
    const creationTime = Math.max(this.now(), this.lastCreation + 1)
    this.lastCreation = creationTime
    const program = control.program ?? this.programs[0]?.id ?? this.createProgram(0).id
    const created: ServerControl = {
      id: this.controls.length + 1,
      mrid: mrid('DC', this.controls.length + 1),
      ...(control.tag ? { tag: control.tag } : {}),
      program,
      creationTime,
      start: control.start,
      duration: control.duration,
      ...(control.randomizeStart ? { randomizeStart: control.randomizeStart } : {}),
      status: 0,
      base: control.base,
    }
    this.controls.push(created)
    this.notifyAll()
    return created
  }

  cancelActiveControls(): void {
    const now = this.now()
    for (const control of this.controls) {
      if (control.status === 0 || control.status === 1)
        if (control.start + control.duration > now) control.status = 2
    }
    this.notifyAll()
  }

  controlByTag(tag: string): ServerControl | undefined {
    return this.controls.find((control) => control.tag === tag)
  }

  responsesFor(tag: string): number[] {
    const control = this.controlByTag(tag)
    return control ? this.responses.filter((r) => r.subject === control.mrid).map((r) => r.status) : []
  }

  /** The readings posted to MirrorUsagePoints: values per reading description. */
  readings(): { description: string; value: number; powerOfTen: number; mup: number }[] {
    const out: { description: string; value: number; powerOfTen: number; mup: number }[] = []
    for (const mirror of this.mirrors) {
      for (const node of mirror.readings) {
        for (const reading of asArray(node.MirrorMeterReading)) {
          const r = reading as XmlNode
          const description = String(r.description ?? '')
          const value = Number((r.Reading as XmlNode[] | XmlNode | undefined) && firstOf(r.Reading).value)
          const type = this.readingTypeOf(mirror.id, String(r.mRID))
          out.push({ description, value, powerOfTen: type, mup: mirror.id })
        }
      }
    }
    return out
  }

  private readingTypeOf(mup: number, readingMrid: string): number {
    const mirror = this.mirrors.find((candidate) => candidate.id === mup)
    const created = this.requests.find(
      (request) =>
        request.method === 'POST' &&
        request.path === '/mup' &&
        request.root === 'MirrorUsagePoint' &&
        String(request.node?.mRID) === mirror?.mrid,
    )
    for (const reading of asArray(created?.node?.MirrorMeterReading)) {
      const r = reading as XmlNode
      if (String(r.mRID) === readingMrid)
        return Number((r.ReadingType as XmlNode | undefined)?.powerOfTenMultiplier ?? 0)
    }
    return 0
  }

  // ── HTTP ─────────────────────────────────────────────────────────────────────────────────────

  private handle(
    request: ReceivedRequest,
    query: URLSearchParams,
  ): { status: number; body?: string; location?: string } {
    const { method, path } = request
    if (this.override?.match.test(path) && method === 'GET') return { status: 200, body: this.override.body }
    const ok = (body: string) => ({ status: 200, body: `<?xml version="1.0" encoding="UTF-8"?>\n${body}` })
    const r = this.rates
    if (path === '/dcap' && method === 'GET') {
      return ok(
        `<DeviceCapability xmlns="${SEP}" xmlns:csipaus="${this.ns}" href="/dcap" pollRate="${this.scaled(r.dcap_poll_seconds ?? 900)}"><TimeLink href="/tm"/><EndDeviceListLink all="${this.devices.length}" href="/edev"/><MirrorUsagePointListLink all="${this.mirrors.length}" href="/mup"/></DeviceCapability>`,
      )
    }
    if (path === '/tm' && method === 'GET') {
      return ok(
        `<Time xmlns="${SEP}" href="/tm" pollRate="900"><currentTime>${this.now()}</currentTime><dstEndTime>0</dstEndTime><dstOffset>0</dstOffset><dstStartTime>0</dstStartTime><localTime>${this.now() + 36_000}</localTime><quality>7</quality><tzOffset>36000</tzOffset></Time>`,
      )
    }
    if (path === '/edev' && method === 'GET') {
      const aggregator = `<EndDevice href="/edev/0" subscribable="0"><lFDI>${this.aggregatorLfdi}</lFDI><sFDI>0</sFDI><changedTime>0</changedTime><SubscriptionListLink all="${this.subscriptions.length}" href="/edev/0/sub"/></EndDevice>`
      const all = [
        ...this.devices.map((device) => this.endDevice(device)),
        ...(this.aggregator ? [aggregator] : []),
        ...Array.from({ length: this.padding }, (_, i) => padDevice(i)),
      ]
      return ok(this.page('EndDeviceList', '/edev', all, query, r.edev_list_poll_seconds))
    }
    if (path === '/edev' && method === 'POST') {
      const node = request.node
      if (request.root !== 'EndDevice' || !node) return { status: 400 }
      const lfdi = String(node.lFDI ?? '').toUpperCase()
      const existing = this.devices.find((device) => device.lfdi === lfdi)
      const device = existing ?? this.registerDevice(lfdi, String(node.sFDI ?? ''))
      return { status: 201, location: `/edev/${device.id}` }
    }
    if (path === '/edev/0/sub' && method === 'POST') {
      if (request.root !== 'Subscription' || !request.node) return { status: 400 }
      this.subscriptions.push(request.node)
      return { status: 201, location: `/edev/0/sub/${this.subscriptions.length}` }
    }
    const edev = /^\/edev\/(\d+)(\/.*)?$/.exec(path)
    if (edev) {
      const device = this.devices.find((candidate) => candidate.id === Number(edev[1]))
      if (!device) return { status: 404 }
      return this.handleDevice(device, edev[2] ?? '', request, query)
    }
    if (path === '/mup' && method === 'GET') {
      const items = this.mirrors.map(
        (mirror) =>
          `<MirrorUsagePoint href="/mup/${mirror.id}"><mRID>${mirror.mrid}</mRID><roleFlags>${mirror.roleFlags}</roleFlags><serviceCategoryKind>0</serviceCategoryKind><status>1</status><deviceLFDI>${mirror.lfdi}</deviceLFDI><postRate>${this.scaled(r.mup_post_seconds ?? 300)}</postRate></MirrorUsagePoint>`,
      )
      return ok(this.page('MirrorUsagePointList', '/mup', items, query, r.mup_post_seconds))
    }
    if (path === '/mup' && method === 'POST') {
      const node = request.node
      if (request.root !== 'MirrorUsagePoint' || !node) return { status: 400 }
      const mridValue = String(node.mRID).toUpperCase()
      let mirror = this.mirrors.find((candidate) => candidate.mrid === mridValue)
      if (!mirror) {
        mirror = {
          id: this.mirrors.length + 1,
          mrid: mridValue,
          lfdi: String(node.deviceLFDI),
          roleFlags: String(node.roleFlags),
          readings: [],
        }
        this.mirrors.push(mirror)
      }
      return { status: 201, location: `/mup/${mirror.id}` }
    }
    const mup = /^\/mup\/(\d+)$/.exec(path)
    if (mup && method === 'POST') {
      const mirror = this.mirrors.find((candidate) => candidate.id === Number(mup[1]))
      if (!mirror || !request.node) return { status: 404 }
      mirror.readings.push(request.node)
      return { status: 201 }
    }
    return { status: 404 }
  }

  private handleDevice(
    device: EndDeviceRecord,
    rest: string,
    request: ReceivedRequest,
    query: URLSearchParams,
  ): { status: number; body?: string; location?: string } {
    const ok = (body: string) => ({ status: 200, body })
    const base = `/edev/${device.id}`
    const { method } = request
    const r = this.rates
    if (rest === '' && method === 'GET') return ok(this.endDevice(device, true))
    if (rest === '/rg' && method === 'GET') {
      return ok(
        `<Registration xmlns="${SEP}" href="${base}/rg" pollRate="86400"><dateTimeRegistered>${this.now()}</dateTimeRegistered><pIN>${device.pin ?? 0}</pIN></Registration>`,
      )
    }
    if (rest === '/cp' && method === 'PUT') {
      const id = request.node?.connectionPointId
      if (request.root !== 'ConnectionPoint' || id === undefined) return { status: 400 }
      device.nmi = String(id)
      return { status: 204 }
    }
    if (rest === '/cp' && method === 'GET') {
      return ok(
        `<csipaus:ConnectionPoint xmlns:csipaus="${this.ns}"><csipaus:connectionPointId>${device.nmi ?? ''}</csipaus:connectionPointId></csipaus:ConnectionPoint>`,
      )
    }
    if (rest === '/der' && method === 'GET') {
      const der = `<DER href="${base}/der/1"><DERAvailabilityLink href="${base}/der/1/dera"/><DERCapabilityLink href="${base}/der/1/dercap"/><DERSettingsLink href="${base}/der/1/derg"/><DERStatusLink href="${base}/der/1/ders"/></DER>`
      return ok(this.page('DERList', `${base}/der`, [der], query, r.der_list_poll_seconds))
    }
    const der = /^\/der\/1\/(dercap|derg|ders|dera)$/.exec(rest)
    if (der && method === 'PUT') {
      const expected = {
        dercap: 'DERCapability',
        derg: 'DERSettings',
        ders: 'DERStatus',
        dera: 'DERAvailability',
      }[der[1] as 'dercap']
      if (request.root !== expected) return { status: 400 }
      device.der[der[1] as 'dercap'] = request.node
      return { status: 204 }
    }
    if (rest === '/fsa' && method === 'GET') {
      const fsas = [...new Set(this.programs.map((program) => program.fsa))].sort()
      const items = (fsas.length ? fsas : [1]).map(
        (fsa) =>
          `<FunctionSetAssignments href="${base}/fsa/${fsa}" subscribable="1"><DERProgramListLink all="${this.programs.filter((p) => p.fsa === fsa).length}" href="${base}/fsa/${fsa}/derp"/><TimeLink href="/tm"/><mRID>${mrid('F5', fsa)}</mRID><description>FSA ${fsa}</description><version>0</version></FunctionSetAssignments>`,
      )
      return ok(this.page('FunctionSetAssignmentsList', `${base}/fsa`, items, query, r.fsa_list_poll_seconds))
    }
    const fsa = /^\/fsa\/(\d+)\/derp$/.exec(rest)
    if (fsa && method === 'GET') {
      const items = this.programs
        .filter((program) => program.fsa === Number(fsa[1]))
        .map(
          (program) =>
            `<DERProgram href="${base}/derp/${program.id}"><mRID>${program.mrid}</mRID><description>Program ${program.id}</description><version>0</version><DefaultDERControlLink href="${base}/derp/${program.id}/dderc"/><DERControlListLink all="${this.controls.filter((c) => c.program === program.id).length}" href="${base}/derp/${program.id}/derc"/><primacy>${program.primacy}</primacy></DERProgram>`,
        )
      return ok(
        this.page('DERProgramList', `${base}/fsa/${fsa[1]}/derp`, items, query, r.derp_list_poll_seconds),
      )
    }
    const derp = /^\/derp\/(\d+)\/(dderc|derc)$/.exec(rest)
    if (derp && method === 'GET') {
      const program = this.programs.find((candidate) => candidate.id === Number(derp[1]))
      if (!program) return { status: 404 }
      if (derp[2] === 'dderc') {
        const control = program.defaultControl
        if (!control) return { status: 404 }
        return ok(
          `<DefaultDERControl xmlns="${SEP}" xmlns:csipaus="${this.ns}" href="${base}/derp/${program.id}/dderc" subscribable="1"><mRID>${control.mrid}</mRID><description>Default</description><version>${control.version}</version><DERControlBase>${this.controlBase(control.base)}</DERControlBase>${control.setGradW !== undefined ? `<setGradW>${control.setGradW}</setGradW>` : ''}</DefaultDERControl>`,
        )
      }
      const now = this.now()
      const items = this.controls
        .filter(
          (control) =>
            control.program === program.id &&
            control.start + control.duration + (control.randomizeStart ?? 0) > now - 5,
        )
        .map(
          (control) =>
            `<DERControl href="${base}/derp/${program.id}/derc/${control.id}" replyTo="${base}/rsps/site_control/rsp" responseRequired="03" subscribable="0"><mRID>${control.mrid}</mRID><description>${control.tag ?? ''}</description><version>0</version><creationTime>${control.creationTime}</creationTime><EventStatus><currentStatus>${control.status === 0 && control.start <= now ? 1 : control.status}</currentStatus><dateTime>${control.creationTime}</dateTime><potentiallySuperseded>false</potentiallySuperseded></EventStatus><interval><duration>${control.duration}</duration><start>${control.start}</start></interval>${control.randomizeStart ? `<randomizeStart>${control.randomizeStart}</randomizeStart>` : ''}<DERControlBase>${this.controlBase(control.base)}</DERControlBase></DERControl>`,
        )
      return ok(
        this.page(
          'DERControlList',
          `${base}/derp/${program.id}/derc`,
          items,
          query,
          r.derp_list_poll_seconds,
        ),
      )
    }
    if (rest === '/rsps/site_control/rsp' && method === 'POST') {
      const node = request.node
      if (request.root !== 'DERControlResponse' || !node) return { status: 400 }
      this.responses.push({
        subject: String(node.subject).toUpperCase(),
        status: Number(node.status),
        lfdi: String(node.endDeviceLFDI),
        at: Date.now(),
      })
      return { status: 201 }
    }
    if (rest === '/sub' && method === 'POST') {
      if (request.node) this.subscriptions.push(request.node)
      return { status: 201, location: `${base}/sub/${this.subscriptions.length}` }
    }
    return { status: 404 }
  }

  private endDevice(device: EndDeviceRecord, root = false): string {
    const base = `/edev/${device.id}`
    return `<EndDevice${root ? ` xmlns="${SEP}" xmlns:csipaus="${this.ns}"` : ''} href="${base}" subscribable="0"><DERListLink all="1" href="${base}/der"/><lFDI>${device.lfdi}</lFDI><sFDI>${device.sfdi}</sFDI><changedTime>${this.now()}</changedTime><enabled>1</enabled><FunctionSetAssignmentsListLink all="1" href="${base}/fsa"/>${this.registrationLinks ? `<RegistrationLink href="${base}/rg"/>` : ''}<SubscriptionListLink all="0" href="${base}/sub"/><csipaus:ConnectionPointLink href="${base}/cp"/></EndDevice>`
  }

  private controlBase(base: Record<string, number | boolean>): string {
    const order = [
      'opModConnect',
      'opModEnergize',
      'opModFixedW',
      'opModImpLimW',
      'opModExpLimW',
      'opModGenLimW',
      'opModLoadLimW',
    ]
    return order
      .filter((key) => base[key] !== undefined)
      .map((key) => {
        const value = base[key]!
        if (typeof value === 'boolean') return `<${key}>${value}</${key}>`
        if (key === 'opModFixedW') return `<${key}>${value}</${key}>`
        // Largest multiplier that keeps the value exact and in Int16.
        let multiplier = 0
        let scaled = Math.round(value)
        while (Math.abs(scaled) > 32_767 || (scaled !== 0 && scaled % 10 === 0 && multiplier < 3)) {
          multiplier += 1
          scaled = Math.round(value / 10 ** multiplier)
        }
        return `<csipaus:${key}><multiplier>${multiplier}</multiplier><value>${scaled}</value></csipaus:${key}>`
      })
      .join('')
  }

  private page(name: string, href: string, items: string[], query: URLSearchParams, poll?: number): string {
    const start = Number(query.get('s') ?? 0)
    const limit = Number(query.get('l') ?? 1)
    const slice = items.slice(start, start + (query.has('l') ? limit : 1))
    return `<${name} xmlns="${SEP}" xmlns:csipaus="${this.ns}" href="${href}" all="${items.length}" results="${slice.length}"${poll !== undefined ? ` pollRate="${this.scaled(poll)}"` : ''} subscribable="1">${slice.join('')}</${name}>`
  }
}

function padDevice(index: number): string {
  const lfdi = (index + 0x100000).toString(16).toUpperCase().padStart(40, 'A')
  return `<EndDevice href="/edev/p${index}"><lFDI>${lfdi}</lFDI><sFDI>1</sFDI><changedTime>0</changedTime></EndDevice>`
}

function mrid(prefix: string, n: number): string {
  return `${prefix}${n.toString(16).toUpperCase().padStart(30, '0')}`
}

function asArray(value: unknown): unknown[] {
  return value === undefined ? [] : Array.isArray(value) ? value : [value]
}

function firstOf(value: unknown): XmlNode {
  return (Array.isArray(value) ? value[0] : value) as XmlNode
}

// ── CACTUS procedure engine ─────────────────────────────────────────────────────────────────────

interface Action {
  type: string
  parameters?: Record<string, unknown>
}
interface Check {
  type: string
  parameters?: Record<string, unknown>
}
interface Step {
  event: { type: string; parameters?: Record<string, unknown>; checks?: Check[] }
  actions?: Action[]
}
export interface Procedure {
  Description: string
  Preconditions?: { immediate_start?: boolean; init_actions?: Action[]; actions?: Action[]; checks?: Check[] }
  Criteria?: { checks?: Check[] }
  Steps: Record<string, Step>
}

export function loadProcedure(id: string): Procedure {
  const text = readFileSync(join(CSIP_TESTDATA, 'cactus', 'client', `${id}.yaml`), 'utf8')
  return (globalThis as unknown as { Bun: { YAML: { parse(text: string): unknown } } }).Bun.YAML.parse(
    text,
  ) as Procedure
}

export interface CheckResult {
  type: string
  ok: boolean
  detail?: string
}

/**
 * Runs one procedure against a CsipTestServer: preconditions at once (or, for procedures with an
 * init phase, once the client has registered and sent its DERSettings), then steps as their
 * events occur, until every step is done or finish-test runs.
 */
export class ProcedureRunner {
  readonly active = new Set<string>()
  readonly completed: string[] = []
  finished = false
  started = false
  private timers: ReturnType<typeof setTimeout>[] = []
  private finishResolve: (() => void) | undefined
  readonly log: string[] = []

  constructor(
    readonly id: string,
    readonly procedure: Procedure,
    readonly server: CsipTestServer,
    readonly options: { lfdi?: string; sfdi?: string } = {},
  ) {}

  start(): void {
    const pre = this.procedure.Preconditions ?? {}
    for (const action of pre.init_actions ?? []) this.act(action)
    const enabledLater = new Set(
      Object.values(this.procedure.Steps)
        .flatMap((step) => step.actions ?? [])
        .filter((action) => action.type === 'enable-steps')
        .flatMap((action) => (action.parameters?.steps as string[]) ?? []),
    )
    const begin = () => {
      if (this.started) return
      this.started = true
      for (const action of pre.actions ?? []) this.act(action)
      for (const name of Object.keys(this.procedure.Steps)) if (!enabledLater.has(name)) this.enable(name)
    }
    this.server.listeners.push((request) => this.onRequest(request))
    // Registration actions must be in place before the client looks.
    for (const action of pre.actions ?? [])
      if (action.type === 'register-end-device' || action.type === 'edev-registration-links') this.act(action)
    if (pre.immediate_start) begin()
    else {
      this.server.listeners.push(() => {
        const device = this.server.devices[0]
        if (!this.started && device?.der.derg) begin()
      })
    }
  }

  /** Resolves when all steps are done (or finish-test ran). */
  done(): Promise<void> {
    if (this.finished) return Promise.resolve()
    return new Promise((resolve) => {
      this.finishResolve = resolve
    })
  }

  stop(): void {
    for (const timer of this.timers) clearTimeout(timer)
    this.timers = []
  }

  /** The procedure's criteria checks (the ones this harness can evaluate). */
  criteria(): CheckResult[] {
    const results: CheckResult[] = [
      {
        type: 'all-steps-complete',
        ok: this.finished || this.active.size === 0,
        detail: [...this.active].join(','),
      },
    ]
    for (const check of this.procedure.Criteria?.checks ?? []) {
      if (check.type === 'all-steps-complete') continue
      const result = this.evaluate(check)
      if (result) results.push(result)
    }
    return results
  }

  private enable(name: string): void {
    if (!this.procedure.Steps[name] || this.active.has(name)) return
    this.active.add(name)
    this.log.push(`enable ${name}`)
    const step = this.procedure.Steps[name]!
    if (step.event.type === 'wait') {
      const seconds = Number(step.event.parameters?.duration_seconds ?? 0)
      this.timers.push(setTimeout(() => this.fire(name), this.server.scaled(seconds) * 1000))
    }
    if (step.event.type === 'proceed') this.timers.push(setTimeout(() => this.fire(name), 0))
  }

  private onRequest(request: ReceivedRequest): void {
    if (!this.started) return
    for (const name of [...this.active]) {
      const step = this.procedure.Steps[name]!
      const type = step.event.type
      const method = type.split('-')[0]
      if (!['GET', 'POST', 'PUT'].includes(method!) || request.method !== method) continue
      const endpoint = String(step.event.parameters?.endpoint ?? '')
      const matches = endpoint.endsWith('*')
        ? request.path.startsWith(endpoint.slice(0, -1))
        : request.path === endpoint
      if (!matches) continue
      if (!(step.event.checks ?? []).every((check) => this.evaluate(check)?.ok ?? true)) continue
      this.fire(name)
    }
  }

  private fire(name: string): void {
    if (!this.active.has(name)) return
    this.active.delete(name)
    this.completed.push(name)
    this.log.push(`fire ${name}`)
    for (const action of this.procedure.Steps[name]!.actions ?? []) this.act(action)
    if (this.active.size === 0 && !this.finished) this.finish()
  }

  private finish(): void {
    this.finished = true
    this.stop()
    this.finishResolve?.()
  }

  private ratings(): { maxW: number } {
    const derg = this.server.devices[0]?.der.derg
    const setMaxW = derg?.setMaxW as XmlNode | undefined
    const value = Number(setMaxW?.value ?? 5000) * 10 ** Number(setMaxW?.multiplier ?? 0)
    return { maxW: value }
  }

  /** `$(now)`, `$(now + '5 minutes')`, `$(maxExportW * 2)`, numbers. */
  private value(raw: unknown, kind: 'time' | 'number'): number {
    if (typeof raw === 'number') return raw
    const text = String(raw).trim()
    const expression = /^\$\((.*)\)$/.exec(text)?.[1]?.trim() ?? text
    if (kind === 'time') {
      const offset = /now\s*\+\s*'(\d+)\s*(second|seconds|minute|minutes|hour|hours)'/.exec(expression)
      const seconds = offset
        ? Number(offset[1]) *
          (offset[2]!.startsWith('minute') ? 60 : offset[2]!.startsWith('hour') ? 3600 : 1)
        : 0
      return this.server.now() + this.server.scaled(seconds)
    }
    const product = /^(maxExportW|maxImportW|maxGenerationW|maxLoadW)\s*(?:\*\s*([\d.]+))?$/.exec(expression)
    if (product) return Math.round(this.ratings().maxW * Number(product[2] ?? 1))
    return Number(expression)
  }

  private base(parameters: Record<string, unknown>): Record<string, number | boolean> {
    const base: Record<string, number | boolean> = {}
    for (const key of [
      'opModImpLimW',
      'opModExpLimW',
      'opModGenLimW',
      'opModLoadLimW',
      'opModFixedW',
      'setGradW',
    ]) {
      if (parameters[key] !== undefined) base[key] = this.value(parameters[key], 'number')
    }
    for (const key of ['opModConnect', 'opModEnergize']) {
      if (parameters[key] !== undefined) base[key] = parameters[key] === true || parameters[key] === 'true'
    }
    return base
  }

  private act(action: Action): void {
    const p = action.parameters ?? {}
    const server = this.server
    this.log.push(`act ${action.type}`)
    switch (action.type) {
      case 'enable-steps':
        for (const name of (p.steps as string[]) ?? []) this.enable(name)
        break
      case 'remove-steps':
        for (const name of (p.steps as string[]) ?? []) this.active.delete(name)
        break
      case 'finish-test':
        this.finish()
        break
      case 'set-comms-rate':
        server.rates = { ...server.rates, ...(p as CommsRates) }
        break
      case 'create-der-program': {
        server.createProgram(Number(p.primacy ?? 0), Number(p.fsa_id ?? 1))
        break
      }
      case 'set-default-der-control': {
        const { setGradW, ...rest } = this.base(p)
        server.setDefaultControl(
          { ...rest, ...(setGradW !== undefined ? { setGradW } : {}) },
          Number(p.derp_id ?? 1),
        )
        break
      }
      case 'create-der-control': {
        const { setGradW: _grad, ...base } = this.base(p)
        let program: number | undefined
        if (p.fsa_id !== undefined || p.primacy !== undefined) {
          program = server.programs.find(
            (candidate) =>
              (p.fsa_id === undefined || candidate.fsa === Number(p.fsa_id)) &&
              (p.primacy === undefined || candidate.primacy === Number(p.primacy)),
          )?.id
        }
        server.createControl({
          start: this.value(p.start ?? '$(now)', 'time'),
          duration: server.scaled(Number(p.duration_seconds ?? 300)),
          base,
          ...(p.tag ? { tag: String(p.tag) } : {}),
          ...(program !== undefined ? { program } : {}),
          ...(p.randomizeStart_seconds
            ? { randomizeStart: server.scaled(Number(p.randomizeStart_seconds)) }
            : {}),
        })
        break
      }
      case 'cancel-active-der-controls':
        server.cancelActiveControls()
        break
      case 'communications-status':
        server.online = p.enabled !== false
        if (!server.online) server.dropConnections()
        break
      case 'register-end-device': {
        if (server.devices.length > 0) break
        const lfdi = this.options.lfdi ?? String(p.aggregator_lfdi)
        const sfdi = this.options.sfdi ?? String(p.aggregator_sfdi)
        const pin = Number(p.registration_pin)
        const digits = String(pin)
        const sum = [...digits].reduce((total, digit) => total + Number(digit), 0)
        server.registerDevice(lfdi, sfdi, Number(`${digits}${(10 - (sum % 10)) % 10}`))
        break
      }
      case 'edev-registration-links':
        server.registrationLinks = p.enabled !== false
        break
      default:
        this.log.push(`unsupported action ${action.type}`)
    }
  }

  private evaluate(check: Check): CheckResult | undefined {
    const p = check.parameters ?? {}
    const server = this.server
    const device = server.devices[0]
    switch (check.type) {
      case 'response-contents': {
        const status = Number(p.status)
        if (p.latest) {
          const latest = server.responses.at(-1)
          const tagged = p.subject_tag ? server.controlByTag(String(p.subject_tag))?.mrid : undefined
          const ok =
            latest !== undefined &&
            latest.status === status &&
            (tagged === undefined || latest.subject === tagged)
          return { type: check.type, ok, detail: JSON.stringify(latest) }
        }
        if (p.subject_tag) {
          const ok = server.responsesFor(String(p.subject_tag)).includes(status)
          return { type: check.type, ok }
        }
        if (p.all) {
          const missing = server.controls.filter(
            (control) =>
              control.status !== 2 &&
              !server.responses.some((r) => r.subject === control.mrid && r.status === status),
          )
          return {
            type: `${check.type}(all,${status})`,
            ok: missing.length === 0,
            detail: missing.map((c) => c.tag ?? c.mrid).join(','),
          }
        }
        return { type: check.type, ok: server.responses.some((r) => r.status === status) }
      }
      case 'end-device-contents': {
        let ok = device !== undefined
        if (p.has_connection_point_id) ok &&= Boolean(device?.nmi)
        if (p.check_lfdi && this.options.lfdi) ok &&= device?.lfdi === this.options.lfdi.toUpperCase()
        return { type: check.type, ok, detail: JSON.stringify({ lfdi: device?.lfdi, nmi: device?.nmi }) }
      }
      case 'der-settings-contents': {
        const derg = device?.der.derg
        let ok = derg !== undefined
        if (p.setMaxW) ok &&= derg?.setMaxW !== undefined
        if (typeof p.setGradW === 'number') ok &&= Number(derg?.setGradW) === p.setGradW
        if (p.doeModesEnabled) ok &&= derg?.doeModesEnabled !== undefined
        return { type: check.type, ok }
      }
      case 'der-capability-contents': {
        const cap = device?.der.dercap
        let ok = cap !== undefined
        if (p.rtgMaxW) ok &&= cap?.rtgMaxW !== undefined
        if (p.doeModesSupported) ok &&= cap?.doeModesSupported !== undefined
        return { type: check.type, ok }
      }
      case 'der-status-contents': {
        const status = device?.der.ders
        let ok = status !== undefined
        const gen = Number.parseInt(
          String((status?.genConnectStatus as XmlNode | undefined)?.value ?? '0'),
          16,
        )
        for (const bit of [0, 1, 2])
          if (p[`genConnectStatus_bit${bit}`] !== undefined)
            ok &&= Boolean(gen & (1 << bit)) === Boolean(p[`genConnectStatus_bit${bit}`])
        if (p.operationalModeStatus !== undefined)
          ok &&=
            Number((status?.operationalModeStatus as XmlNode | undefined)?.value) ===
            Number(p.operationalModeStatus)
        return { type: check.type, ok }
      }
      case 'readings-site-active-power':
      case 'readings-der-active-power':
      case 'readings-site-reactive-power':
      case 'readings-der-reactive-power':
      case 'readings-voltage': {
        const wanted = {
          'readings-site-active-power': 'Site active power',
          'readings-der-active-power': 'DER active power',
          'readings-site-reactive-power': 'Site reactive power',
          'readings-der-reactive-power': 'DER reactive power',
          'readings-voltage': 'Site voltage',
        }[check.type]!
        const count = server.readings().filter((reading) => reading.description === wanted).length
        return { type: check.type, ok: count >= Number(p.minimum_count ?? 1), detail: `${count} readings` }
      }
      case 'all-notifications-transmitted': {
        const failed = server.notifications.filter((n) => n.status < 200 || n.status >= 300)
        return {
          type: check.type,
          ok: failed.length === 0,
          detail: `${failed.length}/${server.notifications.length} failed`,
        }
      }
      case 'subscription-contents': {
        const ok = server.subscriptions.some(
          (s) => String(s.subscribedResource) === String(p.subscribed_resource),
        )
        return { type: check.type, ok }
      }
      default:
        return undefined
    }
  }
}
