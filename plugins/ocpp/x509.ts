/**
 * Just enough X.509 for OCPP Security Profile 3 certificate signing (2.0.1 SignCertificate →
 * CertificateSigned): read a PKCS#10 CSR (PEM), check its self-signature and its subject's
 * common name, and issue a client certificate for its key, signed by the operator's CA with
 * node:crypto. DER is read and written here (a few dozen lines) rather than pulling in a
 * certificate library; what is issued is checked with node:crypto's X509Certificate.
 */
import { createPublicKey, type KeyObject, randomBytes, sign, verify, X509Certificate } from 'node:crypto'
import { OcppError } from './errors.ts'

/** A CSR that cannot be signed: malformed, badly signed, or for another station. */
export class CertificateRequestError extends OcppError {
  override name = 'CertificateRequestError'
}

interface Element {
  tag: number
  /** Offset of the tag byte. */
  start: number
  /** Offset of the contents. */
  contentStart: number
  end: number
}

function element(der: Uint8Array, offset: number): Element {
  if (offset + 2 > der.length) throw new CertificateRequestError('DER: truncated')
  const tag = der[offset]!
  let length = der[offset + 1]!
  let contentStart = offset + 2
  if (length & 0x80) {
    const bytes = length & 0x7f
    if (bytes === 0 || bytes > 4 || contentStart + bytes > der.length)
      throw new CertificateRequestError('DER: bad length')
    length = 0
    for (let i = 0; i < bytes; i++) length = length * 256 + der[contentStart + i]!
    contentStart += bytes
  }
  const end = contentStart + length
  if (end > der.length) throw new CertificateRequestError('DER: truncated')
  return { tag, start: offset, contentStart, end }
}

function children(der: Uint8Array, parent: Element): Element[] {
  const out: Element[] = []
  for (let offset = parent.contentStart; offset < parent.end; ) {
    const child = element(der, offset)
    out.push(child)
    offset = child.end
  }
  return out
}

const bytesOf = (der: Uint8Array, node: Element) => der.subarray(node.start, node.end)
const contentOf = (der: Uint8Array, node: Element) => der.subarray(node.contentStart, node.end)

function decodeOid(content: Uint8Array): string {
  const parts: number[] = []
  let value = 0
  for (const byte of content) {
    value = value * 128 + (byte & 0x7f)
    if (!(byte & 0x80)) {
      parts.push(value)
      value = 0
    }
  }
  const first = parts.shift() ?? 0
  return [
    Math.min(2, Math.floor(first / 40)),
    first - Math.min(2, Math.floor(first / 40)) * 40,
    ...parts,
  ].join('.')
}

// ---- writing ------------------------------------------------------------------------------

function tlv(tag: number, ...contents: Uint8Array[]): Uint8Array {
  const length = contents.reduce((sum, part) => sum + part.length, 0)
  let header: number[]
  if (length < 0x80) header = [tag, length]
  else {
    const bytes: number[] = []
    for (let rest = length; rest > 0; rest = Math.floor(rest / 256)) bytes.unshift(rest % 256)
    header = [tag, 0x80 | bytes.length, ...bytes]
  }
  const out = new Uint8Array(header.length + length)
  out.set(header)
  let offset = header.length
  for (const part of contents) {
    out.set(part, offset)
    offset += part.length
  }
  return out
}

const sequence = (...contents: Uint8Array[]) => tlv(0x30, ...contents)

function oid(dotted: string): Uint8Array {
  const [first, second, ...rest] = dotted.split('.').map(Number)
  const bytes: number[] = []
  for (const value of [first! * 40 + second!, ...rest]) {
    const chunk: number[] = [value & 0x7f]
    for (let v = Math.floor(value / 128); v > 0; v = Math.floor(v / 128)) chunk.unshift((v & 0x7f) | 0x80)
    bytes.push(...chunk)
  }
  return tlv(0x06, Uint8Array.from(bytes))
}

function time(ms: number): Uint8Array {
  const iso = new Date(ms).toISOString()
  const digits = `${iso.slice(0, 4)}${iso.slice(5, 7)}${iso.slice(8, 10)}${iso.slice(11, 13)}${iso.slice(14, 16)}${iso.slice(17, 19)}Z`
  // RFC 5280: UTCTime up to 2049, GeneralizedTime from 2050.
  const year = new Date(ms).getUTCFullYear()
  return year < 2050
    ? tlv(0x17, new TextEncoder().encode(digits.slice(2)))
    : tlv(0x18, new TextEncoder().encode(digits))
}

const NULL = Uint8Array.from([0x05, 0x00])
const bitString = (bytes: Uint8Array) => tlv(0x03, Uint8Array.of(0), bytes)

const OIDS = {
  commonName: '2.5.4.3',
  ecdsaSha256: '1.2.840.10045.4.3.2',
  ecdsaSha384: '1.2.840.10045.4.3.3',
  ecdsaSha512: '1.2.840.10045.4.3.4',
  rsaSha256: '1.2.840.113549.1.1.11',
  rsaSha384: '1.2.840.113549.1.1.12',
  rsaSha512: '1.2.840.113549.1.1.13',
  ed25519: '1.3.101.112',
  basicConstraints: '2.5.29.19',
  keyUsage: '2.5.29.15',
  extKeyUsage: '2.5.29.37',
  clientAuth: '1.3.6.1.5.5.7.3.2',
} as const

/** Digest of a signature algorithm (null: Ed25519 signs the message itself). */
const DIGESTS: Record<string, string | null> = {
  [OIDS.ecdsaSha256]: 'sha256',
  [OIDS.ecdsaSha384]: 'sha384',
  [OIDS.ecdsaSha512]: 'sha512',
  [OIDS.rsaSha256]: 'sha256',
  [OIDS.rsaSha384]: 'sha384',
  [OIDS.rsaSha512]: 'sha512',
  [OIDS.ed25519]: null,
}

export function pemToDer(pem: string, label: string): Uint8Array {
  const match = new RegExp(`-----BEGIN ${label}-----([\\s\\S]*?)-----END ${label}-----`).exec(pem)
  if (!match) throw new CertificateRequestError(`not a PEM ${label}`)
  return Uint8Array.from(Buffer.from(match[1]!.replace(/\s+/g, ''), 'base64'))
}

export function derToPem(der: Uint8Array, label: string): string {
  const base64 = Buffer.from(der).toString('base64')
  return `-----BEGIN ${label}-----\n${base64.match(/.{1,64}/g)!.join('\n')}\n-----END ${label}-----\n`
}

export interface CertificateRequest {
  /** The subject Name as DER, copied into the certificate. */
  subject: Uint8Array
  /** SubjectPublicKeyInfo as DER. */
  publicKeyInfo: Uint8Array
  commonName: string | undefined
}

/** Parse a PEM CSR and check its self-signature. */
export function parseCertificateRequest(pem: string): CertificateRequest {
  const label = /-----BEGIN NEW CERTIFICATE REQUEST-----/.test(pem)
    ? 'NEW CERTIFICATE REQUEST'
    : 'CERTIFICATE REQUEST'
  const der = pemToDer(pem, label)
  const top = element(der, 0)
  const [info, algorithm, signature] = children(der, top)
  if (!info || !algorithm || !signature || signature.tag !== 0x03)
    throw new CertificateRequestError('not a PKCS#10 certification request')
  const [, subject, publicKeyInfo] = children(der, info)
  if (!subject || !publicKeyInfo) throw new CertificateRequestError('CSR without subject or public key')
  const algorithmOid = decodeOid(contentOf(der, children(der, algorithm)[0]!))
  const digest = DIGESTS[algorithmOid]
  if (digest === undefined)
    throw new CertificateRequestError(`CSR signed with an unsupported algorithm ${algorithmOid}`)
  let key: KeyObject
  try {
    key = createPublicKey({ key: Buffer.from(bytesOf(der, publicKeyInfo)), format: 'der', type: 'spki' })
  } catch (error) {
    throw new CertificateRequestError(`CSR public key unreadable: ${(error as Error).message}`)
  }
  const signatureBytes = contentOf(der, signature).subarray(1)
  if (!verify(digest, bytesOf(der, info), key, signatureBytes))
    throw new CertificateRequestError('the CSR signature does not verify')
  return {
    subject: bytesOf(der, subject),
    publicKeyInfo: bytesOf(der, publicKeyInfo),
    commonName: commonNameOf(der, subject),
  }
}

function commonNameOf(der: Uint8Array, name: Element): string | undefined {
  for (const set of children(der, name)) {
    for (const pair of children(der, set)) {
      const [type, value] = children(der, pair)
      if (type && value && decodeOid(contentOf(der, type)) === OIDS.commonName)
        return new TextDecoder().decode(contentOf(der, value))
    }
  }
  return undefined
}

export interface SigningAuthority {
  certificate: X509Certificate
  key: KeyObject
}

/** The subject Name of a certificate, as DER (the issuer of what it signs). */
function subjectOf(certificate: X509Certificate): Uint8Array {
  const der = Uint8Array.from(certificate.raw)
  const [tbs] = children(der, element(der, 0))
  const fields = children(der, tbs!)
  // [0] version is present in every v3 certificate: serial, signature, issuer, validity, subject.
  const subject = fields[fields[0]!.tag === 0xa0 ? 5 : 4]
  if (!subject) throw new CertificateRequestError('the CA certificate has no subject')
  return bytesOf(der, subject)
}

/** Issue a client certificate (TLS clientAuth) for the CSR's key and subject, valid `days` days. */
export function issueCertificate(
  request: CertificateRequest,
  authority: SigningAuthority,
  options: { days: number; now?: number },
): { pem: string; serial: string; notAfter: number } {
  const now = options.now ?? Date.now()
  const keyType = authority.key.asymmetricKeyType
  const algorithm =
    keyType === 'ec'
      ? { id: sequence(oid(OIDS.ecdsaSha256)), digest: 'sha256' as string | null }
      : keyType === 'rsa'
        ? { id: sequence(oid(OIDS.rsaSha256), NULL), digest: 'sha256' }
        : keyType === 'ed25519'
          ? { id: sequence(oid(OIDS.ed25519)), digest: null }
          : undefined
  if (!algorithm) throw new CertificateRequestError(`a CA key of type ${keyType} cannot sign here`)
  const serial = randomBytes(16)
  serial[0] = (serial[0]! & 0x7f) | 0x01
  // Started a minute ago: the station's clock may be a little behind.
  const notBefore = now - 60_000
  const notAfter = now + options.days * 86_400_000
  const extension = (id: string, critical: boolean, value: Uint8Array) =>
    sequence(oid(id), ...(critical ? [Uint8Array.of(0x01, 0x01, 0xff)] : []), tlv(0x04, value))
  const extensions = tlv(
    0xa3,
    sequence(
      extension(OIDS.basicConstraints, true, sequence()),
      // digitalSignature only.
      extension(OIDS.keyUsage, true, Uint8Array.of(0x03, 0x02, 0x07, 0x80)),
      extension(OIDS.extKeyUsage, false, sequence(oid(OIDS.clientAuth))),
    ),
  )
  const tbs = sequence(
    tlv(0xa0, Uint8Array.of(0x02, 0x01, 0x02)),
    tlv(0x02, serial),
    algorithm.id,
    subjectOf(authority.certificate),
    sequence(time(notBefore), time(notAfter)),
    request.subject,
    request.publicKeyInfo,
    extensions,
  )
  const signature = sign(algorithm.digest, tbs, authority.key)
  const certificate = sequence(tbs, algorithm.id, bitString(signature))
  const pem = derToPem(certificate, 'CERTIFICATE')
  // What was made must read back as a certificate the CA signed.
  const check = new X509Certificate(pem)
  if (!check.verify(authority.certificate.publicKey))
    throw new CertificateRequestError('the issued certificate does not verify')
  return { pem, serial: serial.toString('hex').toUpperCase(), notAfter }
}
