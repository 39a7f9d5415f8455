/**
 * 2030.5 device identities (IEEE 2030.5-2018 §6.3.4): the LFDI is the first 160 bits of the
 * SHA-256 fingerprint of the device's DER-encoded certificate, as 40 hex digits; the SFDI is
 * the first 36 bits of it as a decimal number followed by a check digit that makes the sum of
 * all digits a multiple of 10. The same check digit closes a Registration PIN.
 */
import { createHash, X509Certificate } from 'node:crypto'
import { CsipCertificateError } from './errors.ts'

const LFDI = /^[0-9A-Fa-f]{40}$/

/** Check digit: the digit that makes the digit sum of `digits` + it ≡ 0 (mod 10). */
export function checkDigit(digits: string): number {
  let sum = 0
  for (const digit of digits) sum += Number(digit)
  return (10 - (sum % 10)) % 10
}

/** LFDI (upper-case hex) of a PEM or DER certificate: the first 20 bytes of SHA-256(DER). */
export function lfdiFromCertificate(certificate: string | Uint8Array): string {
  let der: Uint8Array
  try {
    der = new X509Certificate(certificate).raw
  } catch (error) {
    throw new CsipCertificateError(`not an X.509 certificate: ${(error as Error).message}`, { cause: error })
  }
  return createHash('sha256').update(der).digest('hex').slice(0, 40).toUpperCase()
}

/** SFDI of an LFDI: its first 36 bits in decimal, then the check digit. */
export function sfdiFromLfdi(lfdi: string): number {
  if (!LFDI.test(lfdi)) throw new CsipCertificateError(`'${lfdi}' is not an LFDI (40 hex digits)`)
  const leading = BigInt(`0x${lfdi.slice(0, 9)}`).toString()
  return Number(`${leading}${checkDigit(leading)}`)
}

/** A PIN as the server stores it: the configured digits followed by their check digit. */
export function pinWithCheckDigit(pin: number): number {
  const digits = String(pin)
  return Number(`${digits}${checkDigit(digits)}`)
}

export function isLfdi(value: string): boolean {
  return LFDI.test(value)
}
