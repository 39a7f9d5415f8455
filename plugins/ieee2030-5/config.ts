/**
 * The `[plugins.csip-aus]` configuration slice (ARCHITECTURE §8): the utility server's
 * DeviceCapability URL, the client's mutual-TLS certificate, key and CA, the mode (one device
 * behind its own certificate, or an aggregator acting for many sites), and one table per site.
 */
import * as z from 'zod'
import { isResourceId, isResourceKind, type ResourceKind } from '../../data-plane/index.ts'
import { durationSeconds, parseDurationSeconds } from '../config-helpers.ts'
import { isLfdi } from './identity.ts'

export { parseDurationSeconds }

const duration = (what: string, min: number, max: number) => durationSeconds(what, min, max, '60 or "5m"')

export interface ResourceRef {
  kind: ResourceKind
  rid: string
}

/** `<kind>.<rid>` of a resource of this node, e.g. `meter.site-1-meter`. */
export function parseResourceRef(value: string): ResourceRef | undefined {
  const dot = value.indexOf('.')
  const kind = value.slice(0, dot)
  const rid = value.slice(dot + 1)
  if (dot < 1 || !isResourceKind(kind) || !isResourceId(rid)) return undefined
  return { kind, rid }
}

const resourceRef = z.string().transform((value, context) => {
  const ref = parseResourceRef(value)
  if (!ref) {
    context.addIssue({
      code: 'custom',
      message: `'${value}' is not <kind>.<rid> (e.g. "meter.site-1-meter")`,
    })
    return z.NEVER
  }
  return ref
})

export const siteConfigSchema = z.strictObject({
  /** National Meter Identifier of the connection point (CSIP-AUS ConnectionPoint). */
  nmi: z.string().min(1).max(32).optional(),
  /** Aggregator mode: this site's EndDevice LFDI (40 hex digits); its SFDI is derived from it. */
  lfdi: z
    .string()
    .refine(isLfdi, 'must be 40 hex digits')
    .transform((value) => value.toUpperCase())
    .optional(),
  /** The registration PIN the utility gave for this device (without check digit): checked against the server's. */
  pin: z.number().int().min(0).max(99_999_999).optional(),
  /** The site's grid meter: its power and voltage become the site MirrorUsagePoint. */
  meter: resourceRef,
  /** The site's DER (PV, batteries, EVSEs…): their ratings form DERCapability, their power a DER MirrorUsagePoint. */
  ders: z.array(resourceRef).max(64).default([]),
  /** Rated active power (W) reported in DERCapability when the DER resources do not say it. */
  rated_w: z.number().positive().max(1e9).optional(),
})

export const csipConfigSchema = z
  .strictObject({
    /** The DeviceCapability URL of the utility server, e.g. "https://utility.example/dcap". */
    server: z.url({ protocol: /^https$/, error: 'must be an https:// URL (the DeviceCapability resource)' }),
    /** PEM files: the client certificate (chain), its private key, and the CA (SERCA) the server's certificate chains to. */
    cert: z.string().min(1),
    key: z.string().min(1),
    ca: z.string().min(1),
    mode: z.enum(['aggregator', 'device']).default('device'),
    /** Poll every this long instead of the rates the server asks for. */
    poll: duration('poll', 1, 86_400).optional(),
    /** Readings post rate when the server does not give one (MirrorUsagePoint postRate). */
    post_rate: duration('post_rate', 1, 86_400).default(300),
    /** CSIP-AUS version: "auto" follows the namespace the server uses. */
    version: z.enum(['auto', 'v1.2', 'v1.3']).default('auto'),
    /** How long one request may take. */
    timeout: duration('timeout', 1, 300).default(30),
    /** Largest response body accepted; larger ones are refused (huge lists are paged instead). */
    max_body_bytes: z
      .number()
      .int()
      .min(4096)
      .max(64 * 1024 * 1024)
      .default(4 * 1024 * 1024),
    /** Largest page asked for (`l`) when reading lists. */
    page_size: z.number().int().min(1).max(1000).default(100),
    /** Highest number of items read from one list (all pages); beyond it the rest is ignored and logged. */
    max_list_items: z.number().int().min(1).max(100_000).default(1000),
    /**
     * Subscriptions: listen for the server's notifications on this "HOST:PORT" (mutual TLS with
     * the client's certificate). Without it the client polls only.
     */
    notify_listen: z
      .string()
      .regex(/^(?:\[[0-9a-fA-F:.]+\]|[^:[\]\s]+):\d{1,5}$/, 'must be "HOST:PORT"')
      .optional(),
    /** The URL the server reaches the listener at (default: https://<notify_listen>). */
    notify_url: z.url({ protocol: /^https$/, error: 'must be an https:// URL' }).optional(),
    sites: z
      .record(z.string().refine(isResourceId, 'a site id follows the resource id rules'), siteConfigSchema)
      .refine((sites) => Object.keys(sites).length > 0, 'at least one [plugins.csip-aus.sites.<rid>] table'),
  })
  .superRefine((config, context) => {
    const sites = Object.entries(config.sites)
    if (config.mode === 'device' && sites.length !== 1) {
      context.addIssue({
        code: 'custom',
        path: ['sites'],
        message: 'device mode takes exactly one site (its EndDevice is the certificate itself)',
      })
    }
    if (config.mode === 'aggregator') {
      for (const [rid, site] of sites) {
        if (!site.lfdi) {
          context.addIssue({
            code: 'custom',
            path: ['sites', rid, 'lfdi'],
            message: "aggregator mode needs each site's EndDevice LFDI",
          })
        }
      }
    }
  })

export type CsipConfig = z.output<typeof csipConfigSchema>
export type CsipSiteConfig = z.output<typeof siteConfigSchema>

/** What each key means, for the configuration reference (scripts/gen-config-docs.ts `DOCS`). */
export const csipConfigDocs: Record<string, { meaning: string; type?: string; default?: string }> = {
  'csip-aus.enabled': {
    meaning: 'run the IEEE 2030.5 / CSIP-AUS client (utility dynamic operating envelopes)',
  },
  'csip-aus.server': { meaning: "the utility server's DeviceCapability URL", type: 'https URL' },
  'csip-aus.cert': {
    meaning: 'PEM client certificate (chain) for mutual TLS; its LFDI is the device in device mode',
    type: 'path',
  },
  'csip-aus.key': { meaning: 'PEM private key of `cert`', type: 'path' },
  'csip-aus.ca': { meaning: "PEM CA (SERCA) the server's certificate must chain to", type: 'path' },
  'csip-aus.mode': {
    meaning:
      '`device` (the certificate is the one EndDevice) or `aggregator` (one EndDevice per site, by its `lfdi`)',
  },
  'csip-aus.poll': {
    meaning: 'poll and post at this interval instead of the rates the server asks for',
    type: 'duration',
    default: 'the server’s',
  },
  'csip-aus.post_rate': { meaning: 'readings post rate when the server gives none', type: 'duration' },
  'csip-aus.version': {
    meaning: 'CSIP-AUS version: `auto` follows the namespace the server uses, or `v1.2` / `v1.3`',
  },
  'csip-aus.timeout': { meaning: 'how long one request to the server may take', type: 'duration' },
  'csip-aus.max_body_bytes': { meaning: 'largest response or notification body accepted', type: 'bytes' },
  'csip-aus.page_size': { meaning: 'list page size asked for (`l`)' },
  'csip-aus.max_list_items': { meaning: 'most items read from one list; the rest is ignored and logged' },
  'csip-aus.notify_listen': {
    meaning: 'subscribe, and listen for notifications here (mutual TLS); unset: poll only',
    type: 'HOST:PORT',
    default: 'unset',
  },
  'csip-aus.notify_url': {
    meaning: 'URL the server reaches the notification listener at',
    type: 'https URL',
    default: 'https://<notify_listen>',
  },
  'csip-aus.sites.<id>.nmi': { meaning: "the site's NMI, registered as its ConnectionPoint", type: 'text' },
  'csip-aus.sites.<id>.lfdi': {
    meaning: "aggregator mode: the site's EndDevice LFDI (40 hex digits); its SFDI is derived",
    type: 'text',
  },
  'csip-aus.sites.<id>.pin': {
    meaning: 'registration PIN from the utility (without check digit), checked against the server’s',
  },
  'csip-aus.sites.<id>.meter': {
    meaning: "the site's grid meter, `<kind>.<rid>`: its readings go to the site MirrorUsagePoint",
    type: 'text',
  },
  'csip-aus.sites.<id>.ders': {
    meaning: "the site's DER, `<kind>.<rid>` each: ratings → DERCapability, power → DER MirrorUsagePoint",
  },
  'csip-aus.sites.<id>.rated_w': {
    meaning: 'rated active power (W) for DERCapability when the DER resources do not say it',
  },
}
