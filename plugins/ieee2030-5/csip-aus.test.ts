import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, test } from 'vitest'
import { validateXML } from 'xmllint-wasm'
import { TESTDATA as TESTDATA_ROOT } from '../../test/helpers/testdata.ts'
import { runPluginCompliance } from '../compliance.ts'
import { CSIP_NAMESPACES, type CsipVersion, parseXml } from './codec.ts'
import { checkDigit, lfdiFromCertificate, pinWithCheckDigit, sfdiFromLfdi } from './identity.ts'
import { csipAusPlugin } from './index.ts'
import { controlsFor, readingType } from './normalise.ts'
import { ControlSchedule, type ProgramSnapshot, randomOffset } from './scheduler.ts'
import {
  type DerControl,
  decodeDefaultDerControl,
  decodeDerControl,
  decodeDerProgram,
  decodeDeviceCapability,
  decodeEndDevice,
  decodeFunctionSetAssignments,
  decodeList,
  decodeNotification,
  decodeTime,
  encodeConnectionPoint,
  encodeDerAvailability,
  encodeDerCapability,
  encodeDerControlResponse,
  encodeDerSettings,
  encodeDerStatus,
  encodeEndDevice,
  encodeMirrorMeterReadingList,
  encodeMirrorUsagePoint,
  encodeSubscription,
} from './sep.ts'

const ROOT = join(import.meta.dirname, '..', '..')
const TESTDATA = join(TESTDATA_ROOT, 'csip-aus')
const captured = (name: string) => readFileSync(join(TESTDATA, 'captured', name), 'utf8')

// A client certificate for the compliance suite (the plugin reads its PEM files at start).
const pkiDir = mkdtempSync(join(tmpdir(), 'csip-unit-'))
execFileSync(
  'sh',
  [
    '-c',
    'openssl ecparam -name prime256v1 -genkey -noout -out k.pem && openssl req -x509 -new -key k.pem -subj /CN=unit -days 2 -out c.pem',
  ],
  { cwd: pkiDir, stdio: 'pipe' },
)
afterAll(() => rmSync(pkiDir, { recursive: true, force: true }))

runPluginCompliance(csipAusPlugin, {
  validConfig: {
    // Nothing listens there: the client keeps retrying in the background, logging warnings.
    server: 'https://127.0.0.1:9/dcap',
    cert: join(pkiDir, 'c.pem'),
    key: join(pkiDir, 'k.pem'),
    ca: join(pkiDir, 'c.pem'),
    mode: 'device',
    sites: { 'site-1': { nmi: '4103000000', meter: 'meter.site-1-meter', ders: ['pv.site-1-pv'] } },
  },
  invalidConfig: { server: 'http://plain.example/dcap' },
})

describe('config', () => {
  const parse = (slice: Record<string, unknown>) => csipAusPlugin.configSchema.safeParse(slice)
  const base = { server: 'https://u.example/dcap', cert: 'c', key: 'k', ca: 'a' }
  test('aggregator mode needs each site lfdi; device mode exactly one site; refs are <kind>.<rid>', () => {
    const agg = parse({ ...base, mode: 'aggregator', sites: { s1: { meter: 'meter.m1' } } })
    expect(agg.error?.issues[0]?.path).toEqual(['sites', 's1', 'lfdi'])
    const two = parse({ ...base, sites: { s1: { meter: 'meter.m1' }, s2: { meter: 'meter.m2' } } })
    expect(two.error?.issues[0]?.path).toEqual(['sites'])
    expect(parse({ ...base, sites: { s1: { meter: 'nope' } } }).success).toBe(false)
    const ok = parse({ ...base, poll: '5m', sites: { s1: { meter: 'meter.m1', ders: ['battery.b1'] } } })
    expect(ok.data?.poll).toBe(300)
    expect(ok.data?.sites.s1?.ders).toEqual([{ kind: 'battery', rid: 'b1' }])
    expect(ok.data?.mode).toBe('device')
  })
})

describe('identity (IEEE 2030.5 §6.3.4)', () => {
  test('SFDI and its check digit match the captured EndDevices of real servers', () => {
    const list = parseXml(captured('getEdev.xml'))
    const devices = decodeList(list.node, 'EndDevice', decodeEndDevice).items
    expect(devices).toHaveLength(3)
    for (const device of devices) expect(sfdiFromLfdi(device.lfdi!)).toBe(device.sfdi)
    const single = decodeEndDevice(parseXml(captured('getEdev_csipaus_edev1.xml')).node)
    expect(sfdiFromLfdi(single.lfdi!)).toBe(single.sfdi) // "050044792964": leading zero
    // The standard's worked example and CACTUS's registration PIN 11111 → 111115.
    expect(sfdiFromLfdi('3E4F45AB31EDFE5B67E343E5E4562E31984E23E5')).toBe(167261211391)
    expect(pinWithCheckDigit(11111)).toBe(111115)
    expect(checkDigit('1111')).toBe(6)
  })

  test('LFDI is the first 160 bits of SHA-256 over the DER certificate', () => {
    const pem = readFileSync(join(pkiDir, 'c.pem'), 'utf8')
    const der = execFileSync('openssl', ['x509', '-in', join(pkiDir, 'c.pem'), '-outform', 'DER'])
    const fingerprint = execFileSync('openssl', ['dgst', '-sha256', '-hex'], { input: der }).toString()
    const hex = /= ([0-9a-f]{64})/.exec(fingerprint)![1]!
    expect(lfdiFromCertificate(pem)).toBe(hex.slice(0, 40).toUpperCase())
    expect(() => lfdiFromCertificate('not a certificate')).toThrow(/X\.509/)
  })
})

describe('XML in: lenient with real servers, refusing what is unsafe', () => {
  test('captured responses decode', () => {
    const dcap = decodeDeviceCapability(parseXml(captured('getDcap.xml')).node)
    expect(dcap).toEqual({
      timeLink: '/api/v2/tm',
      endDeviceListLink: '/api/v2/edev',
      mirrorUsagePointListLink: '/api/v2/mup',
    })
    expect(decodeTime(parseXml(captured('getTm.xml')).node)).toEqual({ currentTime: 1682475024, quality: 5 })
    const fsa = decodeList(
      parseXml(captured('getEdev__EQLDEV3_fsa.xml')).node,
      'FunctionSetAssignments',
      decodeFunctionSetAssignments,
    )
    expect(fsa.items.map((item) => item.derProgramListLink)).toEqual([
      '/api/v2/edev/_EQLDEV3/fsa/2/derp',
      '/api/v2/edev/_EQLDEV3/fsa/1/derp',
    ])
    const derp = decodeList(
      parseXml(captured('getEdev__EQLDEV3_fsa_2_derp.xml')).node,
      'DERProgram',
      decodeDerProgram,
    )
    expect(derp.pollRate).toBe(301)
    expect(derp.items[0]).toMatchObject({ primacy: 1, defaultControlLink: '/api/v2/derp/TESTPRG3/dderc' })
    // ns2: prefix, multiplier 2 → 1500 W; opModEnergize "true".
    const dderc = decodeDefaultDerControl(parseXml(captured('getDerp_TESTPROG3_dderc.xml')).node)
    expect(dderc.base).toEqual({ opModImpLimW: 1500, opModExpLimW: 1500, opModEnergize: true })
    // csipaus: prefix with spaces around "=", xsi:schemaLocation.
    const sapn = decodeDefaultDerControl(parseXml(captured('getDerp_dderc_sapn.xml')).node)
    expect(sapn.base).toEqual({ opModExpLimW: 1500 })
    // `enabled` as 1, ConnectionPointLink in the csipaus namespace.
    const edev = decodeEndDevice(parseXml(captured('getEdev_csipaus_edev1.xml')).node)
    expect(edev).toMatchObject({
      enabled: true,
      connectionPointLink: '/edev/1/cp',
      lfdi: '12A4A4B406AD102E7421019135FFA2805235A21C',
    })
    const cp = parseXml(captured('getEdev_cp_csipaus.xml'))
    expect(cp.root).toBe('ConnectionPoint')
    expect(cp.version).toBe('v1.2')
  })

  test('a v1.3 notification with a DERControlList decodes, all four DOE modes scaled', () => {
    const parsed = parseXml(readFileSync(join(TESTDATA, 'pubsub', 'notification_doe.xml'), 'utf8'))
    expect(parsed.version).toBe('v1.3')
    const notification = decodeNotification(parsed.node)
    expect(notification).toMatchObject({ status: 0, resourceType: 'DERControlList' })
    const control = decodeDerControl(
      (notification.resource!.DERControl as Record<string, unknown>[])[0] as Record<string, unknown>,
    )
    expect(control).toMatchObject({
      mrid: 'AABB',
      start: 456,
      duration: 789,
      currentStatus: 9,
      base: { opModImpLimW: 1000, opModExpLimW: 2000, opModGenLimW: 3000, opModLoadLimW: 4000 },
    })
  })

  test('DOCTYPE, entities, malformed XML and oversized bodies are refused by name', () => {
    const bomb = `<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]><Time><currentTime>&lol2;</currentTime></Time>`
    expect(() => parseXml(bomb)).toThrow(expect.objectContaining({ name: 'CsipXmlError' }))
    const external = `<!DOCTYPE Time [<!ENTITY x SYSTEM "file:///etc/passwd">]><Time>&x;</Time>`
    expect(() => parseXml(external)).toThrow(/DOCTYPE/)
    expect(() => parseXml('<Time><currentTime>1</Time>')).toThrow(
      expect.objectContaining({ name: 'CsipXmlError' }),
    )
    expect(() => parseXml(`<Time>${'x'.repeat(5000)}</Time>`, { maxBytes: 4096 })).toThrow(/limit/)
    expect(parseXml('<Time><currentTime>1 &amp; 2</currentTime></Time>').node.currentTime).toBe('1 & 2')
  })
})

// The IEEE 2030.5 schema (sep.xsd) is not redistributable: the CSIP-AUS extension schemas from
// the testdata are used verbatim, and the 2030.5 core is checked against this model of the types
// the client writes, in sep.xsd's sequence order.
function sepSubset(version: CsipVersion): string {
  return `<?xml version="1.0" encoding="UTF-8"?>
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" targetNamespace="urn:ieee:std:2030.5:ns" xmlns="urn:ieee:std:2030.5:ns" xmlns:csipaus="${CSIP_NAMESPACES[version]}" elementFormDefault="qualified">
  <xs:import namespace="${CSIP_NAMESPACES[version]}" schemaLocation="csipaus-ext.xsd"/>
  <xs:simpleType name="HexBinary8"><xs:restriction base="xs:hexBinary"><xs:maxLength value="1"/></xs:restriction></xs:simpleType>
  <xs:simpleType name="HexBinary16"><xs:restriction base="xs:hexBinary"><xs:maxLength value="2"/></xs:restriction></xs:simpleType>
  <xs:simpleType name="HexBinary32"><xs:restriction base="xs:hexBinary"><xs:maxLength value="4"/></xs:restriction></xs:simpleType>
  <xs:simpleType name="HexBinary160"><xs:restriction base="xs:hexBinary"><xs:maxLength value="20"/></xs:restriction></xs:simpleType>
  <xs:simpleType name="mRIDType"><xs:restriction base="xs:hexBinary"><xs:maxLength value="16"/></xs:restriction></xs:simpleType>
  <xs:simpleType name="String32"><xs:restriction base="xs:string"><xs:maxLength value="32"/></xs:restriction></xs:simpleType>
  <xs:simpleType name="UInt8"><xs:restriction base="xs:unsignedByte"/></xs:simpleType>
  <xs:simpleType name="UInt16"><xs:restriction base="xs:unsignedShort"/></xs:simpleType>
  <xs:simpleType name="UInt32"><xs:restriction base="xs:unsignedInt"/></xs:simpleType>
  <xs:simpleType name="UInt48"><xs:restriction base="xs:unsignedLong"><xs:maxInclusive value="281474976710655"/></xs:restriction></xs:simpleType>
  <xs:simpleType name="Int16"><xs:restriction base="xs:short"/></xs:simpleType>
  <xs:simpleType name="Int48"><xs:restriction base="xs:long"><xs:minInclusive value="-140737488355328"/><xs:maxInclusive value="140737488355327"/></xs:restriction></xs:simpleType>
  <xs:simpleType name="TimeType"><xs:restriction base="xs:long"/></xs:simpleType>
  <xs:simpleType name="SFDIType"><xs:restriction base="xs:unsignedLong"><xs:maxInclusive value="999999999999"/></xs:restriction></xs:simpleType>
  <xs:simpleType name="PowerOfTenMultiplierType"><xs:restriction base="xs:byte"><xs:minInclusive value="-9"/><xs:maxInclusive value="9"/></xs:restriction></xs:simpleType>
  <xs:complexType name="Resource"><xs:attribute name="href" type="xs:anyURI"/></xs:complexType>
  <xs:complexType name="Link"><xs:attribute name="href" type="xs:anyURI" use="required"/></xs:complexType>
  <xs:complexType name="ListLink"><xs:complexContent><xs:extension base="Link"><xs:attribute name="all" type="UInt32"/></xs:extension></xs:complexContent></xs:complexType>
  <xs:complexType name="ActivePower"><xs:sequence><xs:element name="multiplier" type="PowerOfTenMultiplierType"/><xs:element name="value" type="Int16"/></xs:sequence></xs:complexType>
  <xs:complexType name="WattHour"><xs:sequence><xs:element name="multiplier" type="PowerOfTenMultiplierType"/><xs:element name="value" type="UInt48"/></xs:sequence></xs:complexType>
  <xs:complexType name="TimeTariffIntervalList"/>
  <xs:complexType name="ConsumptionTariffIntervalList"/>
  <xs:complexType name="Status8"><xs:sequence><xs:element name="dateTime" type="TimeType"/><xs:element name="value" type="HexBinary8"/></xs:sequence></xs:complexType>
  <xs:complexType name="StatusUInt8"><xs:sequence><xs:element name="dateTime" type="TimeType"/><xs:element name="value" type="UInt8"/></xs:sequence></xs:complexType>
  <xs:complexType name="StatusPerCent"><xs:sequence><xs:element name="dateTime" type="TimeType"/><xs:element name="value" type="UInt16"/></xs:sequence></xs:complexType>
  <xs:element name="EndDevice"><xs:complexType><xs:complexContent><xs:extension base="Resource"><xs:sequence>
    <xs:element name="deviceCategory" type="HexBinary32" minOccurs="0"/><xs:element name="lFDI" type="HexBinary160" minOccurs="0"/><xs:element name="sFDI" type="SFDIType"/><xs:element name="changedTime" type="TimeType"/><xs:element ref="csipaus:ConnectionPointLink" minOccurs="0"/>
  </xs:sequence></xs:extension></xs:complexContent></xs:complexType></xs:element>
  <xs:element name="DERCapability"><xs:complexType><xs:complexContent><xs:extension base="Resource"><xs:sequence>
    <xs:element name="modesSupported" type="HexBinary32"/><xs:element name="rtgMaxChargeRateW" type="ActivePower" minOccurs="0"/><xs:element name="rtgMaxDischargeRateW" type="ActivePower" minOccurs="0"/><xs:element name="rtgMaxW" type="ActivePower"/><xs:element name="rtgMaxWh" type="WattHour" minOccurs="0"/><xs:element name="type" type="UInt8"/><xs:element ref="csipaus:doeModesSupported"/>
  </xs:sequence></xs:extension></xs:complexContent></xs:complexType></xs:element>
  <xs:element name="DERSettings"><xs:complexType><xs:complexContent><xs:extension base="Resource"><xs:sequence>
    <xs:element name="modesEnabled" type="HexBinary32" minOccurs="0"/><xs:element name="setGradW" type="UInt16"/><xs:element name="setMaxW" type="ActivePower"/><xs:element name="updatedTime" type="TimeType"/><xs:element ref="csipaus:doeModesEnabled" minOccurs="0"/>
  </xs:sequence></xs:extension></xs:complexContent></xs:complexType></xs:element>
  <xs:element name="DERStatus"><xs:complexType><xs:complexContent><xs:extension base="Resource"><xs:sequence>
    <xs:element name="genConnectStatus" type="Status8" minOccurs="0"/><xs:element name="operationalModeStatus" type="StatusUInt8" minOccurs="0"/><xs:element name="readingTime" type="TimeType"/><xs:element name="stateOfChargeStatus" type="StatusPerCent" minOccurs="0"/>
  </xs:sequence></xs:extension></xs:complexContent></xs:complexType></xs:element>
  <xs:element name="DERAvailability"><xs:complexType><xs:complexContent><xs:extension base="Resource"><xs:sequence>
    <xs:element name="readingTime" type="TimeType"/><xs:element name="statWAvail" type="ActivePower" minOccurs="0"/>
  </xs:sequence></xs:extension></xs:complexContent></xs:complexType></xs:element>
  <xs:element name="DERControlResponse"><xs:complexType><xs:complexContent><xs:extension base="Resource"><xs:sequence>
    <xs:element name="createdDateTime" type="TimeType" minOccurs="0"/><xs:element name="endDeviceLFDI" type="HexBinary160"/><xs:element name="status" type="UInt8" minOccurs="0"/><xs:element name="subject" type="mRIDType"/>
  </xs:sequence></xs:extension></xs:complexContent></xs:complexType></xs:element>
  <xs:complexType name="ReadingType"><xs:sequence>
    <xs:element name="accumulationBehaviour" type="UInt8" minOccurs="0"/><xs:element name="commodity" type="UInt8" minOccurs="0"/><xs:element name="dataQualifier" type="UInt8" minOccurs="0"/><xs:element name="flowDirection" type="UInt8" minOccurs="0"/><xs:element name="intervalLength" type="UInt32" minOccurs="0"/><xs:element name="kind" type="UInt8" minOccurs="0"/><xs:element name="phase" type="UInt8" minOccurs="0"/><xs:element name="powerOfTenMultiplier" type="PowerOfTenMultiplierType" minOccurs="0"/><xs:element name="uom" type="UInt8" minOccurs="0"/>
  </xs:sequence></xs:complexType>
  <xs:complexType name="DateTimeInterval"><xs:sequence><xs:element name="duration" type="UInt32"/><xs:element name="start" type="TimeType"/></xs:sequence></xs:complexType>
  <xs:complexType name="Reading"><xs:sequence>
    <xs:element name="qualityFlags" type="HexBinary16" minOccurs="0"/><xs:element name="timePeriod" type="DateTimeInterval" minOccurs="0"/><xs:element name="value" type="Int48" minOccurs="0"/>
  </xs:sequence></xs:complexType>
  <xs:complexType name="MirrorMeterReading"><xs:sequence>
    <xs:element name="mRID" type="mRIDType"/><xs:element name="description" type="String32" minOccurs="0"/><xs:element name="Reading" type="Reading" minOccurs="0"/><xs:element name="ReadingType" type="ReadingType" minOccurs="0"/>
  </xs:sequence></xs:complexType>
  <xs:element name="MirrorUsagePoint"><xs:complexType><xs:complexContent><xs:extension base="Resource"><xs:sequence>
    <xs:element name="mRID" type="mRIDType"/><xs:element name="description" type="String32" minOccurs="0"/><xs:element name="roleFlags" type="HexBinary16"/><xs:element name="serviceCategoryKind" type="UInt8"/><xs:element name="status" type="UInt8"/><xs:element name="deviceLFDI" type="HexBinary160"/><xs:element name="MirrorMeterReading" type="MirrorMeterReading" minOccurs="0" maxOccurs="unbounded"/>
  </xs:sequence></xs:extension></xs:complexContent></xs:complexType></xs:element>
  <xs:element name="MirrorMeterReadingList"><xs:complexType><xs:sequence>
    <xs:element name="MirrorMeterReading" type="MirrorMeterReading" minOccurs="0" maxOccurs="unbounded"/>
  </xs:sequence><xs:attribute name="all" type="UInt32" use="required"/><xs:attribute name="results" type="UInt32" use="required"/></xs:complexType></xs:element>
  <xs:element name="Subscription"><xs:complexType><xs:complexContent><xs:extension base="Resource"><xs:sequence>
    <xs:element name="subscribedResource" type="xs:anyURI"/><xs:element name="encoding" type="UInt8"/><xs:element name="level" type="xs:string"/><xs:element name="limit" type="UInt32"/><xs:element name="notificationURI" type="xs:anyURI"/>
  </xs:sequence></xs:extension></xs:complexContent></xs:complexType></xs:element>
</xs:schema>`
}

describe.each(['v1.2', 'v1.3'] as const)('XML out (%s) validates against the CSIP-AUS schemas', (version) => {
  const ext = readFileSync(join(TESTDATA, 'xsd', `csipaus-ext-${version}.xsd`), 'utf8')
  const validate = async (xml: string) => {
    const result = await validateXML({
      xml: { fileName: 'doc.xml', contents: xml },
      schema: { fileName: 'sep.xsd', contents: sepSubset(version) },
      preload: [{ fileName: 'csipaus-ext.xsd', contents: ext }],
    })
    return result.errors.map((error) => error.message)
  }
  const lfdi = '3E4F45AB31EDFE5B67E343E5E4562E3100000001'
  const documents: [string, string][] = [
    ['EndDevice', encodeEndDevice({ lfdi, sfdi: sfdiFromLfdi(lfdi), changedTime: 1_700_000_000 }, version)],
    ['ConnectionPoint', encodeConnectionPoint('4103000000', version)],
    [
      'DERCapability',
      encodeDerCapability(
        { ratedW: 5_000, type: 83, maxChargeW: 5000, maxDischargeW: 5000, maxWh: 13_500 },
        version,
      ),
    ],
    ['DERSettings', encodeDerSettings({ maxW: 100_000, updatedTime: 1_700_000_000 }, version)],
    [
      'DERStatus',
      encodeDerStatus(
        { readingTime: 1_700_000_000, connected: true, operating: true, socPercent: 55.5 },
        version,
      ),
    ],
    ['DERAvailability', encodeDerAvailability({ readingTime: 1_700_000_000, availableW: 4_000 }, version)],
    [
      'DERControlResponse',
      encodeDerControlResponse(
        { lfdi, subject: 'DC000000000000000000000000000001', status: 2, createdDateTime: 1 },
        version,
      ),
    ],
    [
      'MirrorUsagePoint',
      encodeMirrorUsagePoint(
        {
          mrid: `5173${lfdi.slice(0, 28)}`,
          description: 'site-1 site',
          lfdi,
          roleFlags: 3,
          readings: [readingType(lfdi, 'site', 'power'), readingType(lfdi, 'site', 'voltage_l1')],
        },
        version,
      ),
    ],
    [
      'MirrorMeterReadingList',
      encodeMirrorMeterReadingList(
        [
          { type: readingType(lfdi, 'site', 'voltage'), value: 231.4, start: 1_700_000_000, duration: 60 },
          { type: readingType(lfdi, 'site', 'power'), value: -4_200, start: 1_700_000_000, duration: 60 },
        ],
        version,
      ),
    ],
    [
      'Subscription',
      encodeSubscription(
        { resource: '/edev/1/fsa', notificationUri: 'https://node.example/notify', limit: 1 },
        version,
      ),
    ],
  ]
  test.each(documents)('%s', async (_name, xml) => {
    expect(await validate(xml)).toEqual([])
    expect(xml).toContain(
      CSIP_NAMESPACES[version] === CSIP_NAMESPACES['v1.2'] && xml.includes('csipaus:')
        ? 'https://csipaus.org/ns"'
        : '',
    )
    // What the client writes, it reads back.
    expect(parseXml(xml).root).toBe(_name)
  })

  test('an out-of-order document is caught (the check has teeth)', async () => {
    const wrong = encodeDerSettings({ maxW: 1000, updatedTime: 1 }, version).replace(
      /<setGradW>0<\/setGradW>(<setMaxW>.*?<\/setMaxW>)/,
      '$1<setGradW>0</setGradW>',
    )
    expect(await validate(wrong)).not.toEqual([])
  })
})

describe('scheduling', () => {
  const control = (
    mrid: string,
    start: number,
    duration: number,
    base: DerControl['base'],
    extra: Partial<DerControl> = {},
  ): DerControl => ({
    mrid,
    creationTime: 100,
    currentStatus: 0,
    potentiallySuperseded: false,
    start,
    duration,
    randomizeStart: 0,
    randomizeDuration: 0,
    replyTo: '/rsp',
    responseRequired: 3,
    base,
    ...extra,
  })
  const program = (
    href: string,
    primacy: number,
    controls: DerControl[],
    defaults?: DerControl['base'],
  ): ProgramSnapshot => ({
    href,
    primacy,
    controls,
    ...(defaults ? { defaultControl: { base: defaults, mrid: `DD${href}` } } : {}),
  })
  const statuses = (due: { mrid: string; status: number }[]) => due.map((d) => `${d.mrid}:${d.status}`)

  test('received → started → completed; gaps fall back to the default', () => {
    const schedule = new ControlSchedule()
    const due = schedule.update(
      [
        program('/p1', 1, [control('A', 1000, 60, { opModExpLimW: 1500 })], {
          opModExpLimW: 5000,
          opModImpLimW: 9000,
        }),
      ],
      990,
    )
    expect(statuses(due)).toEqual(['A:1'])
    let tick = schedule.tick(995)
    expect(tick.modes.get('opModExpLimW')).toMatchObject({ value: 5000, source: { type: 'default' } })
    tick = schedule.tick(1000)
    expect(statuses(tick.responses)).toEqual(['A:2'])
    expect(tick.modes.get('opModExpLimW')).toMatchObject({ value: 1500, until: 1060 })
    expect(tick.modes.get('opModImpLimW')).toMatchObject({ value: 9000 })
    tick = schedule.tick(1060)
    expect(statuses(tick.responses)).toEqual(['A:3'])
    expect(tick.modes.get('opModExpLimW')?.value).toBe(5000)
  })

  test('primacy: the better program wins per mode; a newer overlapping event supersedes', () => {
    const schedule = new ControlSchedule()
    schedule.update(
      [
        program('/p1', 1, [control('LOW', 1000, 100, { opModExpLimW: 100 })]),
        program('/p0', 0, [control('HIGH', 1000, 100, { opModImpLimW: 200 })]),
      ],
      1000,
    )
    const tick = schedule.tick(1001)
    expect(tick.modes.get('opModExpLimW')?.value).toBe(100)
    expect(tick.modes.get('opModImpLimW')?.value).toBe(200)
    const due = schedule.update(
      [
        program('/p1', 1, [
          control('LOW', 1000, 100, { opModExpLimW: 100 }),
          control('NEW', 1050, 100, { opModExpLimW: 0 }, { creationTime: 200 }),
        ]),
        program('/p0', 0, [control('HIGH', 1000, 100, { opModImpLimW: 200 })]),
      ],
      1010,
    )
    expect(statuses(due)).toEqual(['NEW:1', 'LOW:7'])
  })

  test('cancelled or withdrawn events are answered 6; expired on arrival 253', () => {
    const schedule = new ControlSchedule()
    schedule.update(
      [
        program('/p', 0, [
          control('C', 1000, 100, { opModExpLimW: 1 }),
          control('W', 1000, 100, { opModExpLimW: 2 }),
        ]),
      ],
      990,
    )
    const due = schedule.update(
      [program('/p', 0, [control('C', 1000, 100, { opModExpLimW: 1 }, { currentStatus: 2 })])],
      995,
    )
    expect(statuses(due).sort()).toEqual(['C:6', 'W:6'])
    const late = schedule.update([program('/p', 0, [control('OLD', 100, 10, { opModExpLimW: 1 })])], 995)
    expect(statuses(late)).toEqual(['OLD:1', 'OLD:253'])
  })

  test('randomised starts stay within the window and are stable per event', () => {
    const offsets = Array.from({ length: 200 }, (_, i) => randomOffset(`E${i}`, 60, 7))
    expect(Math.min(...offsets)).toBeGreaterThanOrEqual(0)
    expect(Math.max(...offsets)).toBeLessThanOrEqual(60)
    expect(new Set(offsets).size).toBeGreaterThan(30)
    expect(randomOffset('E1', 60, 7)).toBe(randomOffset('E1', 60, 7))
    expect(randomOffset('E1', -60, 7)).toBeLessThanOrEqual(0)
  })

  test('modes become §5 commands: W limits with until on the host clock, connect 1/0', () => {
    const schedule = new ControlSchedule()
    schedule.update(
      [
        program(
          '/p',
          0,
          [control('X', 1000, 60, { opModExpLimW: 1500, opModGenLimW: 3000, opModConnect: false })],
          { opModImpLimW: 5000, opModLoadLimW: 7000, opModEnergize: true },
        ),
      ],
      1000,
    )
    const { modes } = schedule.tick(1000)
    const commands = controlsFor(modes, 10_000) // server 10 s ahead of host
    expect(Object.fromEntries(commands.map((c) => [c.command, c.payload]))).toEqual({
      limit_export: { v: 1500, u: 'W', until: 1_050_000, source: 'csip-aus:event:X' },
      limit_import: { v: 5000, u: 'W', source: 'csip-aus:default:DD/p' },
      limit_generation: { v: 3000, u: 'W', until: 1_050_000, source: 'csip-aus:event:X' },
      limit_load: { v: 7000, u: 'W', source: 'csip-aus:default:DD/p' },
      connect: { v: 0, u: '1', until: 1_050_000, source: 'csip-aus:event:X' },
    })
  })
})
