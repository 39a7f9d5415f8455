/**
 * OCPP Security Profile 3 against real `ocpp-rpc` stations over wss: a client certificate from
 * the configured CA whose CN is the station id admits the station (no password); a certificate
 * naming another station, or from another CA, is refused with the reason logged; stations
 * without a certificate keep their password (Security Profile 2). OCPP 2.0.1 SignCertificate:
 * the station's CSR (made with openssl) is signed by the operator's CA and comes back as
 * CertificateSigned, and the station connects with the new certificate.
 */
import { execFileSync } from 'node:child_process'
import { createPublicKey, X509Certificate } from 'node:crypto'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { RPCClient } from 'ocpp-rpc'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { createPluginHarness, type PluginHarness } from '../compliance.ts'
import { ocppPlugin } from './index.ts'
import { CertificateRequestError, issueCertificate, parseCertificateRequest } from './x509.ts'

let dir: string
let harness: PluginHarness<typeof ocppPlugin.configSchema>
let port: number
const clients: RPCClient[] = []
const pem = (name: string) => readFile(join(dir, name), 'utf8')

function openssl(...args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' })
}

/** An EC key and a CSR for `cn`. */
function keyAndCsr(name: string, cn: string): void {
  openssl('ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', `${name}.key`)
  openssl('req', '-new', '-key', `${name}.key`, '-subj', `/O=ACME/CN=${cn}`, '-out', `${name}.csr`)
}

function ca(name: string): void {
  openssl('ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', `${name}.key`)
  openssl(
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

function leaf(name: string, cn: string, issuer: string, ext = ''): void {
  keyAndCsr(name, cn)
  const args = ['x509', '-req', '-in', `${name}.csr`, '-CA', `${issuer}.pem`, '-CAkey', `${issuer}.key`]
  openssl(
    ...args,
    '-CAcreateserial',
    '-days',
    '2',
    ...(ext ? ['-extfile', `${name}.ext`] : []),
    '-out',
    `${name}.pem`,
  )
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'oe-ocpp-sp3-'))
  ca('station-ca')
  ca('other-ca')
  await writeFile(join(dir, 'server.ext'), 'subjectAltName=IP:127.0.0.1\n')
  leaf('server', '127.0.0.1', 'station-ca', 'server.ext')
  leaf('sp3a', 'SP3A', 'station-ca')
  leaf('rogue', 'SP3A', 'other-ca')
  harness = await createPluginHarness(ocppPlugin, {
    listen: '127.0.0.1:0',
    tls_cert: join(dir, 'server.pem'),
    tls_key: join(dir, 'server.key'),
    tls_ca: join(dir, 'station-ca.pem'),
    signing_ca_cert: join(dir, 'station-ca.pem'),
    signing_ca_key: join(dir, 'station-ca.key'),
    signed_cert_days: 30,
    stations: { PW1: { password: 'pw1-secret-password' } },
  })
  await harness.instance.start?.({})
  port = Number(String(harness.instance.status?.().listen).split(':').pop())
}, 30_000)

afterAll(async () => {
  for (const client of clients) await client.close({ force: true }).catch(() => {})
  await harness?.dispose()
  await rm(dir, { recursive: true, force: true })
})

async function station(
  identity: string,
  tls: { cert?: string; key?: string },
  options: { password?: string; version?: 'ocpp1.6' | 'ocpp2.0.1' } = {},
): Promise<RPCClient> {
  const client = new RPCClient({
    endpoint: `wss://127.0.0.1:${port}/ocpp`,
    identity,
    protocols: [options.version ?? 'ocpp2.0.1'],
    strictMode: true,
    reconnect: false,
    ...(options.password ? { password: options.password } : {}),
    wsOpts: { ca: await pem('station-ca.pem'), ...tls },
  } as never)
  clients.push(client)
  await client.connect()
  return client
}

const refusals = () =>
  harness.logger.entries
    .filter((entry) => entry.msg === 'station refused')
    .map((entry) => entry.obj as Record<string, unknown>)

describe('Security Profile 3: the certificate is the identity', () => {
  test('a certificate from the CA with the station id as CN connects without a password', async () => {
    const client = await station('SP3A', { cert: await pem('sp3a.pem'), key: await pem('sp3a.key') })
    const boot = (await client.call('BootNotification', {
      reason: 'PowerUp',
      chargingStation: { vendorName: 'ACME', model: 'Secure' },
    })) as { status: string }
    expect(boot.status).toBe('Accepted')
    expect(harness.instance.status?.()).toMatchObject({
      tls: true,
      clientCertificates: true,
      signsCertificates: true,
    })
    await client.close({ force: true })
  })

  test('a certificate naming another station is refused, the reason logged', async () => {
    await expect(
      station('SP3B', { cert: await pem('sp3a.pem'), key: await pem('sp3a.key') }),
    ).rejects.toThrow(/Unauthorized/)
    expect(refusals().at(-1)).toMatchObject({
      station: 'SP3B',
      reason: 'certificate-mismatch',
      certificateCn: 'SP3A',
    })
  })

  test('a certificate from another CA is refused, the reason logged', async () => {
    await expect(
      station('SP3A', { cert: await pem('rogue.pem'), key: await pem('rogue.key') }),
    ).rejects.toThrow(/Unauthorized/)
    expect(refusals().at(-1)).toMatchObject({ station: 'SP3A', reason: 'certificate-untrusted' })
  })

  test('without a certificate: the password still works (Security Profile 2), nothing else does', async () => {
    const client = await station('PW1', {}, { password: 'pw1-secret-password', version: 'ocpp1.6' })
    expect(await client.call('Heartbeat', {})).toHaveProperty('currentTime')
    await client.close({ force: true })
    await expect(station('NOCERT', {})).rejects.toThrow(/Unauthorized/)
    expect(refusals().at(-1)).toMatchObject({ station: 'NOCERT', reason: 'unknown' })
  })
})

describe('OCPP 2.0.1 SignCertificate → CertificateSigned', () => {
  test("the station's CSR is signed by the operator's CA, and the new certificate connects", async () => {
    const client = await station('SP3A', { cert: await pem('sp3a.pem'), key: await pem('sp3a.key') })
    const chains: string[] = []
    client.handle('CertificateSigned', async ({ params }) => {
      chains.push((params as { certificateChain: string }).certificateChain)
      return { status: 'Accepted' }
    })
    keyAndCsr('renewed', 'SP3A')
    const csr = await pem('renewed.csr')
    expect(
      await client.call('SignCertificate', { csr, certificateType: 'ChargingStationCertificate' }),
    ).toEqual({
      status: 'Accepted',
    })
    for (let i = 0; i < 100 && chains.length === 0; i++)
      await new Promise((resolve) => setTimeout(resolve, 50))
    expect(chains).toHaveLength(1)
    const [leafPem, caPem] = chains[0]!.split(/(?<=-----END CERTIFICATE-----\n)/)
    const issued = new X509Certificate(leafPem!)
    const authority = new X509Certificate(await pem('station-ca.pem'))
    expect(issued.subject).toContain('CN=SP3A')
    expect(issued.verify(authority.publicKey)).toBe(true)
    expect(issued.checkIssued(authority)).toBe(true)
    expect(new X509Certificate(caPem!).fingerprint256).toBe(authority.fingerprint256)
    // For the key of the CSR.
    const renewedKey = createPublicKey(await pem('renewed.key'))
    expect(issued.publicKey.export({ format: 'der', type: 'spki' })).toEqual(
      renewedKey.export({ format: 'der', type: 'spki' }),
    )
    const days = (Date.parse(issued.validTo) - Date.now()) / 86_400_000
    expect(Math.round(days)).toBe(30)
    await client.close({ force: true })
    await writeFile(join(dir, 'renewed.pem'), leafPem!)
    const renewed = await station('SP3A', { cert: leafPem!, key: await pem('renewed.key') })
    expect(await renewed.call('Heartbeat', {})).toHaveProperty('currentTime')

    // A CSR for another station, or for a V2G certificate, is refused.
    keyAndCsr('other', 'SP3Z')
    expect(await renewed.call('SignCertificate', { csr: await pem('other.csr') })).toEqual({
      status: 'Rejected',
    })
    expect(await renewed.call('SignCertificate', { csr, certificateType: 'V2GCertificate' })).toEqual({
      status: 'Rejected',
    })
    expect(await renewed.call('SignCertificate', { csr: 'not a CSR' })).toEqual({ status: 'Rejected' })
    expect(harness.dataPlane.events.filter((event) => event.type === 'certificate_signed')).toEqual([
      expect.objectContaining({ rid: 'SP3A', event: expect.objectContaining({ status: 'Accepted' }) }),
      expect.objectContaining({ rid: 'SP3A', event: expect.objectContaining({ status: 'Rejected' }) }),
      expect.objectContaining({ rid: 'SP3A', event: expect.objectContaining({ status: 'Rejected' }) }),
      expect.objectContaining({ rid: 'SP3A', event: expect.objectContaining({ status: 'Rejected' }) }),
    ])
    await renewed.close({ force: true })
  })

  test('a CSR whose signature does not verify is refused by the parser', async () => {
    keyAndCsr('tampered', 'SP3A')
    const der = Buffer.from(
      (await pem('tampered.csr')).replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''),
      'base64',
    )
    // Flip a bit in the subject's CN: the self-signature no longer covers it.
    const at = der.indexOf(Buffer.from('SP3A'))
    der[at] = der[at]! ^ 0x01
    const tampered = `-----BEGIN CERTIFICATE REQUEST-----\n${der.toString('base64')}\n-----END CERTIFICATE REQUEST-----\n`
    expect(() => parseCertificateRequest(tampered)).toThrow(CertificateRequestError)
    expect(() => parseCertificateRequest(tampered)).toThrow(/does not verify/)
    // An RSA CSR signs too (with an EC CA).
    openssl(
      'req',
      '-new',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      'rsa.key',
      '-subj',
      '/CN=RSA1',
      '-out',
      'rsa.csr',
    )
    const request = parseCertificateRequest(await pem('rsa.csr'))
    expect(request.commonName).toBe('RSA1')
    const authority = {
      certificate: new X509Certificate(await pem('station-ca.pem')),
      key: (await import('node:crypto')).createPrivateKey(await pem('station-ca.key')),
    }
    const issued = issueCertificate(request, authority, { days: 1 })
    await writeFile(join(dir, 'rsa.pem'), issued.pem)
    openssl('verify', '-CAfile', 'station-ca.pem', '-purpose', 'sslclient', 'rsa.pem')
  })
})
