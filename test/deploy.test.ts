/**
 * deploy/ (issue 15, Deployment): the Kubernetes manifests, the Helm values of the NATS cluster,
 * the compose setup and the Grafana dashboard, checked without a cluster or a container engine.
 *
 * - Every Kubernetes object is validated against the Kubernetes OpenAPI schema
 *   (`kubernetes-models`' compiled validators), and fields the schema does not know are refused
 *   too (as kubeconform -strict does); then the objects' cross-references are checked.
 * - The ConfigMap's config.toml and compose's oe-node.toml parse with the node's own config
 *   schema and plugin schemas; compose's nats.conf passes `nats-server -t`.
 * - The manifests' key handling (the init container's script), config and probes run a real
 *   node against a real nats-server, and the dashboard's every metric is looked up in that
 *   node's /metrics; its queries are parsed with Prometheus's PromQL grammar.
 * - compose's nats.conf runs as a real 3-server cluster with a replica on compose's config.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process'
import { chmod, copyFile, mkdir, readdir, readFile, stat, symlink, writeFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { jetstreamManager } from '@nats-io/jetstream'
import { connect } from '@nats-io/transport-node'
import { parser as promqlParser } from '@prometheus-io/lezer-promql'
import { parse as parseToml, stringify as stringifyToml } from 'smol-toml'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { freePort } from '../data-plane/index.ts'
import { configSchema, loadConfig, parseConfigText } from '../node/config.ts'
import { dataDirPaths } from '../node/data-dir.ts'
import { builtinPlugins, validatePluginConfig } from '../plugins/index.ts'
import {
  cleanupAll,
  ROOT,
  type RunningNode,
  runCli,
  startNatsServer,
  startNode,
  tempDir,
} from './helpers/node-process.ts'

const DEPLOY = join(ROOT, 'deploy')
const KUBERNETES = join(DEPLOY, 'kubernetes')

afterAll(cleanupAll)

/** A pod name as the Deployment's pods get them: the replica id through the downward API. */
const POD_NAME = 'oe-node-7d9f8b6c4-x2x7q'

// ---- shapes of what the tests read ------------------------------------------------------------

type Labels = Record<string, string>

interface K8sObject {
  apiVersion: string
  kind: string
  metadata: { name: string; namespace?: string; labels?: Labels }
  spec?: unknown
  data?: Record<string, string>
  stringData?: Record<string, string>
}

interface Probe {
  exec?: { command: string[] }
  httpGet?: { path: string; port: string | number }
}

interface Container {
  name: string
  image: string
  command?: string[]
  args?: string[]
  env?: { name: string; value?: string; valueFrom?: { secretKeyRef?: { name: string; key: string } } }[]
  ports?: { name: string; containerPort: number }[]
  volumeMounts?: { name: string; mountPath: string; readOnly?: boolean }[]
  securityContext?: {
    readOnlyRootFilesystem?: boolean
    allowPrivilegeEscalation?: boolean
    capabilities?: { drop?: string[] }
  }
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> }
  livenessProbe?: Probe
  readinessProbe?: Probe
  startupProbe?: Probe
}

interface Volume {
  name: string
  emptyDir?: object
  configMap?: { name: string }
  secret?: { secretName: string; defaultMode?: number; items?: { key: string; path: string }[] }
}

interface PodSpec {
  securityContext?: { runAsNonRoot?: boolean; runAsUser?: number; fsGroup?: number }
  initContainers?: Container[]
  containers: Container[]
  volumes?: Volume[]
}

interface DeploymentSpec {
  replicas: number
  selector: { matchLabels: Labels }
  template: { metadata: { labels: Labels }; spec: PodSpec }
}

interface ServiceSpec {
  type?: string
  selector: Labels
  ports: { name: string; port: number; targetPort: string | number }[]
}

// ---- reading the files ------------------------------------------------------------------------

async function readYamlDocuments(path: string): Promise<unknown[]> {
  const text = await readFile(path, 'utf8')
  const parsed = Bun.YAML.parse(text) as unknown
  // One document parses to itself, several (separated by `---`) to an array of documents.
  const multi = /^---\s*$/m.test(text) && Array.isArray(parsed)
  return (multi ? (parsed as unknown[]) : [parsed]).filter((doc) => doc !== null && doc !== undefined)
}

/** Every Kubernetes object in deploy/kubernetes (nats-values.yaml is Helm values, not objects). */
async function kubernetesObjects(): Promise<{ file: string; object: K8sObject }[]> {
  const files = (await readdir(KUBERNETES)).filter(
    (name) => /\.ya?ml$/.test(name) && name !== 'nats-values.yaml',
  )
  const result: { file: string; object: K8sObject }[] = []
  for (const file of files.sort()) {
    for (const doc of await readYamlDocuments(join(KUBERNETES, file)))
      result.push({ file, object: doc as K8sObject })
  }
  return result
}

function only<T>(objects: { object: K8sObject }[], kind: string, name?: string): T & K8sObject {
  const found = objects.filter(
    ({ object }) => object.kind === kind && (name === undefined || object.metadata.name === name),
  )
  expect(found.map(({ object }) => `${object.kind}/${object.metadata.name}`)).toHaveLength(1)
  return found[0]!.object as T & K8sObject
}

const portOf = (hostPort: string): number => Number(hostPort.slice(hostPort.lastIndexOf(':') + 1))
const tcpPortOf = (multiaddr: string): number => Number(/\/tcp\/(\d+)/.exec(multiaddr)?.[1])

/** A Kubernetes quantity (`180Gi`, `4G`, `512Mi`) in bytes. */
function quantityBytes(quantity: string): number {
  const match = /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$/.exec(quantity)
  if (!match) throw new Error(`'${quantity}' is not a Kubernetes quantity`)
  const unit = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, k: 1e3, M: 1e6, G: 1e9, T: 1e12 }
  return Number(match[1]) * (match[2] ? unit[match[2] as keyof typeof unit] : 1)
}

/** Retry `attempt` until it resolves (at most `timeoutMs`). */
async function waitForValue<T>(attempt: () => Promise<T>, what: string, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    try {
      return await attempt()
    } catch (error) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${(error as Error).message}`)
      await Bun.sleep(100)
    }
  }
}

function exec(
  file: string,
  args: string[],
  options: { env?: Record<string, string | undefined>; timeoutMs?: number } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const env = Object.fromEntries(
    Object.entries({ ...process.env, ...options.env }).filter(([, value]) => value !== undefined),
  )
  return new Promise((resolvePromise) => {
    execFile(file, args, { env, timeout: options.timeoutMs ?? 20_000 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0
      resolvePromise({ code, stdout, stderr })
    })
  })
}

/** Parse a config.toml as the node does: TOML, the whole schema, then each enabled plugin's. */
function parseNodeConfig(text: string, source: string) {
  const result = configSchema.safeParse(parseConfigText(text, source))
  if (!result.success) {
    throw new Error(
      `${source}: ${result.error.issues.map((issue) => `${issue.path.join('.')}: ${issue.message}`).join('; ')}`,
    )
  }
  const plugins = validatePluginConfig(result.data.plugins, builtinPlugins)
  return { config: result.data, plugins }
}

// ---- Kubernetes schema validation -------------------------------------------------------------

const API_GROUPS: Record<string, string> = {
  '': 'Core',
  apps: 'Apps',
  policy: 'Policy',
  'networking.k8s.io': 'Networking',
  batch: 'Batch',
}

type CompiledValidator = ((data: unknown) => boolean) & {
  errors?: { instancePath: string; keyword: string; params: unknown }[] | null
}

/**
 * Wrap a parsed document so that every property the validator reads is recorded: whatever it
 * never read is a field the schema does not have (a typo, or a field of another kind).
 */
function tracked(
  value: unknown,
  path: string,
  reads: Map<string, { keys: string[]; read: Set<string> }>,
): unknown {
  if (value === null || typeof value !== 'object') return value
  const entry = { keys: Object.keys(value), read: new Set<string>() }
  reads.set(path, entry)
  const copy: Record<string, unknown> | unknown[] = Array.isArray(value)
    ? value.map((item, index) => tracked(item, `${path}/${index}`, reads))
    : Object.fromEntries(
        Object.entries(value).map(([key, item]) => [key, tracked(item, `${path}/${key}`, reads)]),
      )
  return new Proxy(copy, {
    get(target, property, receiver) {
      if (typeof property === 'string') entry.read.add(property)
      return Reflect.get(target, property, receiver)
    },
  })
}

/** Schema problems of one object, as `path: problem` lines (empty when it is valid). */
async function schemaProblems(object: K8sObject): Promise<string[]> {
  const slash = object.apiVersion.indexOf('/')
  const group = slash < 0 ? '' : object.apiVersion.slice(0, slash)
  const version = object.apiVersion.slice(slash + 1)
  const groupName = API_GROUPS[group]
  if (groupName === undefined) return [`${object.apiVersion}: no schema for this API group here`]
  const schemaName = `IoK8sApi${groupName}${version[0]!.toUpperCase()}${version.slice(1)}${object.kind}`
  const module = (await import(`kubernetes-models/_schemas/${schemaName}`).catch(() => undefined)) as
    | { validate: CompiledValidator }
    | undefined
  if (!module) return [`${object.apiVersion} ${object.kind}: not a Kubernetes kind`]
  const reads = new Map<string, { keys: string[]; read: Set<string> }>()
  const valid = module.validate(tracked(object, '', reads))
  const problems = valid
    ? []
    : (module.validate.errors ?? []).map(
        (error) => `${error.instancePath || '/'}: ${error.keyword} ${JSON.stringify(error.params)}`,
      )
  for (const [path, { keys, read }] of reads) {
    for (const key of keys) if (!read.has(key)) problems.push(`${path}/${key}: unknown field`)
  }
  return problems
}

describe('Kubernetes manifests (deploy/kubernetes)', () => {
  let objects: { file: string; object: K8sObject }[]
  let deployment: K8sObject & { spec: DeploymentSpec }
  let pod: PodSpec
  let node: Container
  let configText: string

  beforeAll(async () => {
    // The schemas come from the kubernetes-models devDependency: fail here, by name, without it.
    await import('kubernetes-models/_schemas/IoK8sApiCoreV1ConfigMap')
    objects = await kubernetesObjects()
    deployment = only<{ spec: DeploymentSpec }>(objects, 'Deployment', 'oe-node')
    pod = deployment.spec.template.spec
    node = pod.containers.find((container) => container.name === 'oe-node')!
    const configMap = only(objects, 'ConfigMap', 'oe-node-config')
    configText = configMap.data!['config.toml']!
  })

  test('every object validates against the Kubernetes schema, unknown fields refused', async () => {
    expect(objects.length).toBeGreaterThanOrEqual(10)
    const problems: string[] = []
    for (const { file, object } of objects) {
      for (const problem of await schemaProblems(object))
        problems.push(`${file} ${object.kind}/${object.metadata?.name}: ${problem}`)
    }
    expect(problems).toEqual([])
  })

  test('the validator refuses a wrong type, a misspelt field and an unknown kind', async () => {
    const broken = structuredClone(deployment) as K8sObject & { spec: DeploymentSpec }
    const container = broken.spec.template.spec.containers[0]! as Container & Record<string, unknown>
    ;(container.ports![0] as Record<string, unknown>).containerPort = 'seven thousand'
    container.imagePullPolicyy = 'Always'
    const problems = await schemaProblems(broken)
    expect(problems.some((line) => line.includes('/containers/0/ports/0/containerPort: type'))).toBe(true)
    expect(problems).toContain('/spec/template/spec/containers/0/imagePullPolicyy: unknown field')
    expect(await schemaProblems({ ...deployment, kind: 'Deploymint' })).toEqual([
      'apps/v1 Deploymint: not a Kubernetes kind',
    ])
  })

  test('config.toml in the ConfigMap parses with the node config schema and the plugin schemas', () => {
    const { config, plugins } = parseNodeConfig(configText, 'ConfigMap oe-node-config config.toml')
    expect(config.nats.url).toBe('nats://nats:4222')
    expect(config.nats.replicas).toBe(3)
    expect(config.api.listen).toBe('0.0.0.0:7410')
    expect(plugins.map(({ definition }) => definition.id).sort()).toEqual(['ocpi', 'ocpp', 'openadr-vtn'])
    // No secret in a ConfigMap: ingest tokens come from a Secret through the environment.
    expect(config.api.ingest_tokens).toEqual([])
  })

  test('the Deployment: 3 replicas, selector = pod labels, every Service selects its pods', () => {
    expect(deployment.spec.replicas).toBe(3)
    const labels = deployment.spec.template.metadata.labels
    expect(labels).toMatchObject(deployment.spec.selector.matchLabels)
    const services = objects.filter(({ object }) => object.kind === 'Service')
    expect(services.map(({ object }) => object.metadata.name).sort()).toEqual([
      'oe-node-api',
      'oe-node-libp2p',
      'oe-node-ocpi',
      'oe-node-ocpp',
      'oe-node-openadr',
    ])
    const containerPorts = new Map((node.ports ?? []).map((port) => [port.name, port.containerPort]))
    for (const { object } of services) {
      const spec = object.spec as ServiceSpec
      expect(Object.keys(spec.selector).length, object.metadata.name).toBeGreaterThan(0)
      expect(labels, object.metadata.name).toMatchObject(spec.selector)
      for (const port of spec.ports) {
        const target =
          typeof port.targetPort === 'string' ? containerPorts.get(port.targetPort) : port.targetPort
        expect(target, `${object.metadata.name} ${port.name}`).toBeDefined()
      }
    }
    const pdb = only<{ spec: { selector: { matchLabels: Labels }; minAvailable: number } }>(
      objects,
      'PodDisruptionBudget',
    )
    expect(labels).toMatchObject(pdb.spec.selector.matchLabels)
  })

  test('container ports are the ports config.toml listens on, and each listener has a Service', () => {
    const { config, plugins } = parseNodeConfig(configText, 'ConfigMap')
    const containerPorts = new Map((node.ports ?? []).map((port) => [port.name, port.containerPort]))
    expect(containerPorts.get('api')).toBe(portOf(config.api.listen))
    expect(containerPorts.get('libp2p')).toBe(tcpPortOf(config.federation.listen[0]!))
    const listeners: Record<string, string> = { ocpp: 'ocpp', 'openadr-vtn': 'openadr', ocpi: 'ocpi' }
    const servicePorts = new Set(
      objects
        .filter(({ object }) => object.kind === 'Service')
        .flatMap(({ object }) => (object.spec as ServiceSpec).ports.map((port) => String(port.targetPort))),
    )
    for (const { definition, config: slice } of plugins) {
      const portName = listeners[definition.id]!
      const listen = (slice as { listen: string }).listen
      expect(listen.startsWith('0.0.0.0:'), `${definition.id} listens beyond loopback`).toBe(true)
      expect(containerPorts.get(portName), definition.id).toBe(portOf(listen))
      expect(servicePorts.has(portName), `a Service for ${definition.id}`).toBe(true)
    }
    for (const name of ['api', 'libp2p']) expect(servicePorts.has(name), name).toBe(true)
  })

  test('probes ask /livez and /readyz on the API port, from inside the pod', () => {
    const { config } = parseNodeConfig(configText, 'ConfigMap')
    const api = `http://127.0.0.1:${portOf(config.api.listen)}`
    expect(node.livenessProbe?.exec?.command.at(-1)).toBe(`${api}/livez`)
    expect(node.startupProbe?.exec?.command.at(-1)).toBe(`${api}/livez`)
    expect(node.readinessProbe?.exec?.command.at(-1)).toBe(`${api}/readyz`)
  })

  test('every OE_NODE_* variable it sets is a setting the node takes', async () => {
    const env = Object.fromEntries(
      (node.env ?? []).map((variable) => [variable.name, variable.value ?? `${POD_NAME}-token`]),
    )
    expect(Object.keys(env)).toContain('OE_NODE_NODE_REPLICA_ID')
    await expect(loadConfig({ env })).resolves.toBeDefined()
    await expect(loadConfig({ env: { ...env, OE_NODE_NODE_REPLICA: 'x' } })).rejects.toThrow(
      /OE_NODE_NODE_REPLICA/,
    )
  })

  test('Secrets and the ConfigMap it mounts exist, with the keys it reads', () => {
    const secrets = new Map(
      objects
        .filter(({ object }) => object.kind === 'Secret')
        .map(({ object }) => [object.metadata.name, { ...object.data, ...object.stringData }]),
    )
    const configMaps = new Map(
      objects
        .filter(({ object }) => object.kind === 'ConfigMap')
        .map(({ object }) => [object.metadata.name, object.data ?? {}]),
    )
    const volumes = new Map((pod.volumes ?? []).map((volume) => [volume.name, volume]))
    for (const container of [...(pod.initContainers ?? []), ...pod.containers]) {
      for (const mount of container.volumeMounts ?? [])
        expect(volumes.has(mount.name), `${container.name} mounts ${mount.name}`).toBe(true)
      for (const variable of container.env ?? []) {
        const ref = variable.valueFrom?.secretKeyRef
        if (ref) expect(Object.keys(secrets.get(ref.name) ?? {}), variable.name).toContain(ref.key)
      }
    }
    for (const volume of volumes.values()) {
      if (volume.configMap) expect(configMaps.has(volume.configMap.name), volume.name).toBe(true)
      if (volume.secret) {
        const keys = Object.keys(secrets.get(volume.secret.secretName) ?? {})
        expect(keys.length, volume.secret.secretName).toBeGreaterThan(0)
        for (const item of volume.secret.items ?? []) expect(keys, volume.name).toContain(item.key)
        // 0400: the kubelet adds group read for fsGroup, never more.
        expect(volume.secret.defaultMode, volume.name).toBe(0o400)
      }
    }
    const configVolume = [...volumes.values()].find((volume) => volume.configMap)!
    const configMount = node.volumeMounts!.find((mount) => mount.name === configVolume.name)!
    const configArg = node.args![node.args!.indexOf('--config') + 1]
    expect(configArg).toBe(`${configMount.mountPath}/config.toml`)
    expect(Object.keys(configMaps.get(configVolume.configMap!.name)!)).toContain('config.toml')
  })

  test('non-root, read-only root file system, no capabilities, data dir on an emptyDir', () => {
    expect(pod.securityContext?.runAsNonRoot).toBe(true)
    expect(pod.securityContext?.runAsUser).toBeGreaterThan(0)
    for (const container of [...(pod.initContainers ?? []), ...pod.containers]) {
      expect(container.securityContext?.readOnlyRootFilesystem, container.name).toBe(true)
      expect(container.securityContext?.allowPrivilegeEscalation, container.name).toBe(false)
      expect(container.securityContext?.capabilities?.drop, container.name).toEqual(['ALL'])
      expect(container.resources?.requests, container.name).toBeDefined()
      expect(container.resources?.limits?.memory, container.name).toBeDefined()
    }
    const dataDir = node.env!.find((variable) => variable.name === 'OE_NODE_DATA_DIR')!.value!
    const mount = node.volumeMounts!.find((m) => dataDir.startsWith(`${m.mountPath}/`))!
    expect(pod.volumes!.find((volume) => volume.name === mount.name)?.emptyDir).toBeDefined()
    // The init container installs the key where the node looks for it.
    const script = pod.initContainers![0]!.command!.join(' ')
    const paths = dataDirPaths(dataDir)
    expect(script).toContain(`/var/lib/oe-node/data/keys/node.key`)
    expect(`${dataDir}/keys/node.key`).toBe(paths.key)
    expect(script).toContain(paths.adminToken)
  })

  test('NATS Helm values: 3-server JetStream cluster behind the Service the node points at', async () => {
    const values = Bun.YAML.parse(await readFile(join(KUBERNETES, 'nats-values.yaml'), 'utf8')) as {
      fullnameOverride: string
      config: {
        cluster: { enabled: boolean; replicas: number }
        jetstream: {
          enabled: boolean
          fileStore: { enabled: boolean; pvc: { size: string }; maxSize: string }
        }
        nats: { port: number }
      }
    }
    // Only keys of the chart's values layout (nats-io/k8s chart `nats` 1.x/2.x): a misspelt key
    // would be ignored by Helm without a word.
    const leaves = (value: unknown, prefix: string): string[] =>
      value !== null && typeof value === 'object' && !Array.isArray(value)
        ? Object.entries(value).flatMap(([key, item]) =>
            // Maps keyed by the user (topology keys, env names) end the chart's layout.
            ['topologySpreadConstraints', 'env', 'requests', 'limits'].includes(key)
              ? [`${prefix}${key}`]
              : leaves(item, `${prefix}${key}.`),
          )
        : [prefix.slice(0, -1)]
    expect(leaves(values, '').sort()).toEqual(
      [
        'config.cluster.enabled',
        'config.cluster.replicas',
        'config.jetstream.enabled',
        'config.jetstream.fileStore.enabled',
        'config.jetstream.fileStore.maxSize',
        'config.jetstream.fileStore.pvc.enabled',
        'config.jetstream.fileStore.pvc.size',
        'config.jetstream.memoryStore.enabled',
        'config.monitor.enabled',
        'config.nats.port',
        'container.env',
        'container.image.tag',
        'container.resources.limits',
        'container.resources.requests',
        'fullnameOverride',
        'natsBox.enabled',
        'podDisruptionBudget.enabled',
        'podTemplate.topologySpreadConstraints',
        'promExporter.enabled',
      ].sort(),
    )
    expect(values.config.cluster).toMatchObject({ enabled: true, replicas: 3 })
    expect(values.config.jetstream.enabled).toBe(true)
    expect(values.config.jetstream.fileStore.enabled).toBe(true)

    const { config } = parseNodeConfig(configText, 'ConfigMap')
    const url = new URL(config.nats.url!)
    expect(url.hostname).toBe(values.fullnameOverride)
    expect(Number(url.port)).toBe(values.config.nats.port)
    expect(config.nats.replicas).toBe(values.config.cluster.replicas)

    // Each server holds a full copy of every stream: their limits must fit in JetStream's.
    const maxSize = quantityBytes(values.config.jetstream.fileStore.maxSize)
    expect(maxSize).toBeLessThan(quantityBytes(values.config.jetstream.fileStore.pvc.size))
    const streams = Object.values(config.streams).reduce((sum, limits) => sum + limits.max_bytes, 0)
    expect(streams).toBeLessThanOrEqual(maxSize * 0.9)
  })
})

// ---- the manifests run a real node ------------------------------------------------------------

describe('the Deployment’s key handling, config and probes run a real node', () => {
  let node: RunningNode
  let peerId: string
  let secretToken: string
  let dataDir: string
  let container: Container
  let metricTypes: Map<string, string>

  beforeAll(async () => {
    const objects = await kubernetesObjects()
    const deployment = only<{ spec: DeploymentSpec }>(objects, 'Deployment', 'oe-node')
    const pod = deployment.spec.template.spec
    container = pod.containers.find((c) => c.name === 'oe-node')!
    const configText = only(objects, 'ConfigMap', 'oe-node-config').data!['config.toml']!

    // What an operator does once: `oe-node init`, whose key and token go into the Secrets.
    const source = await tempDir('oe-deploy-src-')
    const init = await runCli(['--data-dir', source, '--json', 'init', '--org', 'Gridco'])
    expect(init.code, init.stderr).toBe(0)
    peerId = (JSON.parse(init.stdout) as { peerId: string }).peerId

    // The pod: Secret files as the kubelet mounts them with fsGroup (0440), an empty data dir.
    const root = await tempDir('oe-deploy-pod-')
    const at = (path: string) => join(root, path)
    const volumes = new Map((pod.volumes ?? []).map((volume) => [volume.name, volume]))
    const initContainer = pod.initContainers![0]!
    for (const mount of initContainer.volumeMounts ?? []) {
      const secret = volumes.get(mount.name)?.secret
      await mkdir(at(mount.mountPath), { recursive: true })
      for (const item of secret?.items ?? []) {
        const from = item.key === 'node.key' ? join(source, 'keys', 'node.key') : join(source, 'admin.token')
        await copyFile(from, join(at(mount.mountPath), item.path))
        await chmod(join(at(mount.mountPath), item.path), 0o440)
      }
    }
    // The init container's script, its absolute paths moved under the temp root.
    const script = initContainer.command!.at(-1)!.replaceAll(/(\/(?:var|run)\/)/g, `${root}$1`)
    const ran = await exec('/bin/sh', ['-ec', script])
    expect(ran.code, ran.stderr).toBe(0)

    dataDir = at(container.env!.find((variable) => variable.name === 'OE_NODE_DATA_DIR')!.value!)
    secretToken = (await readFile(join(source, 'admin.token'), 'utf8')).trim()

    // The ConfigMap's config.toml, with loopback ports (0) and one small nats-server instead of
    // the cluster: one copy, and the default stream limits rather than the cluster's 100GiB.
    const config = parseToml(configText) as {
      nats: Record<string, unknown>
      streams?: unknown
      plugins: Record<string, Record<string, unknown>>
    }
    delete config.nats.replicas
    delete config.nats.url
    delete config.streams
    for (const slice of Object.values(config.plugins)) if ('listen' in slice) slice.listen = '127.0.0.1:0'
    const configMount = container.volumeMounts!.find((mount) => mount.name === 'config')!
    await mkdir(at(configMount.mountPath), { recursive: true })
    await writeFile(at(`${configMount.mountPath}/config.toml`), stringifyToml(config))

    const nats = await startNatsServer()
    const args = container.args!.slice(1).map((arg) => (arg.startsWith('/') ? at(arg) : arg))
    node = await startNode({
      dataDir,
      args: [...args, '--nats-url', nats.url],
      // What the Deployment sets from the Secret and from the pod's name.
      env: {
        OE_NODE_API_INGEST_TOKENS: 'ingest-token-from-the-secret-0123',
        OE_NODE_NODE_REPLICA_ID: POD_NAME,
      },
    })
    const metrics = await (await node.fetch('/metrics', { token: null })).text()
    metricTypes = new Map(
      [...metrics.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((match) => [match[1]!, match[2]!] as const),
    )
  })

  test('the init container installs the key and token 0600 in a 0700 data dir', async () => {
    const mode = async (path: string) => (await stat(path)).mode & 0o777
    const paths = dataDirPaths(dataDir)
    expect(await mode(paths.root)).toBe(0o700)
    expect(await mode(paths.keys)).toBe(0o700)
    expect(await mode(paths.key)).toBe(0o600)
    expect(await mode(paths.adminToken)).toBe(0o600)
  })

  test('the replica is the organisation of the Secret’s key and answers its admin token', async () => {
    const response = await node.fetch('/v1/status', { token: secretToken })
    expect(response.status).toBe(200)
    const status = (await response.json()) as { org: string; peerId: string; replica: { id: string } }
    expect(status).toMatchObject({ org: 'Gridco', peerId, replica: { id: POD_NAME } })
  })

  test('the Secret’s key mounted as is (0440) is refused: hence the init container', async () => {
    const bare = await tempDir('oe-deploy-bare-')
    await mkdir(join(bare, 'keys'), { recursive: true, mode: 0o700 })
    await copyFile(join(dataDir, 'keys', 'node.key'), join(bare, 'keys', 'node.key'))
    await chmod(join(bare, 'keys', 'node.key'), 0o440)
    const result = await runCli([
      '--data-dir',
      bare,
      'start',
      '--api',
      '127.0.0.1:0',
      '--nats-url',
      'nats://127.0.0.1:1',
    ])
    expect(result.code).not.toBe(0)
    expect(result.stderr).toContain('chmod 600')
  })

  test('the probes’ own commands pass against the running node', async () => {
    const port = new URL(node.api).port
    for (const probe of [container.startupProbe, container.livenessProbe, container.readinessProbe]) {
      const [file, ...args] = probe!.exec!.command.map((part) => part.replace(':7410/', `:${port}/`))
      const result = await exec(file!, args)
      expect(result.code, `${args.at(-1)} ${result.stderr}`).toBe(0)
    }
  })

  test('every metric the Grafana dashboard queries is in /metrics', async () => {
    const dashboard = JSON.parse(await readFile(join(DEPLOY, 'grafana', 'oe-node.json'), 'utf8')) as Dashboard
    const queried = dashboardMetricNames(dashboard)
    expect(queried.size).toBeGreaterThanOrEqual(15)
    const missing = [...queried].filter((name) => !metricExists(name, metricTypes))
    expect(missing).toEqual([])
    // Replicas and leases, which the dashboard's scale-out panels read.
    expect(metricTypes.get('oe_replicas')).toBe('gauge')
    expect(metricTypes.get('oe_lease_owned')).toBe('gauge')
    // The lookup itself can fail.
    expect(metricExists('oe_ingest_batch_seconds_bucket', metricTypes)).toBe(true)
    expect(metricExists('oe_ingest_records_total_bucket', metricTypes)).toBe(false)
    expect(metricExists('oe_no_such_metric', metricTypes)).toBe(false)
  })

  test('the readiness probe fails once the node stops', async () => {
    const port = new URL(node.api).port
    expect(await node.stop()).toBe(0)
    const [file, ...args] = container.readinessProbe!.exec!.command.map((part) =>
      part.replace(':7410/', `:${port}/`),
    )
    expect((await exec(file!, args)).code).not.toBe(0)
  })
})

// ---- Grafana ----------------------------------------------------------------------------------

interface DashboardPanel {
  id: number
  type: string
  title: string
  gridPos: { x: number; y: number; w: number; h: number }
  targets?: { expr: string; refId: string; datasource?: unknown }[]
}

interface Dashboard {
  uid: string
  title: string
  panels: DashboardPanel[]
  templating: { list: { name: string; type: string; definition?: string; query?: unknown }[] }
}

// biome-ignore lint/suspicious/noTemplateCurlyInString: Grafana's variable syntax, not a template
const DATASOURCE_VARIABLE = '${datasource}'

/** Every PromQL expression of the dashboard: panel queries, and the metric of `label_values()`. */
function dashboardExpressions(dashboard: Dashboard): string[] {
  return [
    ...dashboard.panels.flatMap((panel) => (panel.targets ?? []).map((target) => target.expr)),
    ...dashboard.templating.list.flatMap((variable) => {
      const match = /^label_values\((.+), *\w+\)$/.exec(variable.definition ?? '')
      return match ? [match[1]!] : []
    }),
  ]
}

/**
 * Parse one expression with Prometheus's own PromQL grammar, Grafana's interval variables
 * replaced by a duration: its syntax errors (offsets) and the metric names it selects.
 */
function parsePromql(expr: string): { errors: number[]; metrics: string[] } {
  const text = expr.replaceAll(/\$__(rate_interval|interval|range)\b/g, '5m')
  const errors: number[] = []
  const metrics: string[] = []
  promqlParser.parse(text).iterate({
    enter: (node) => {
      if (node.type.isError) errors.push(node.from)
      if (node.name === 'Identifier' && node.node.parent?.name === 'VectorSelector')
        metrics.push(text.slice(node.from, node.to))
    },
  })
  return { errors, metrics }
}

/** The metric names the dashboard's expressions select. */
function dashboardMetricNames(dashboard: Dashboard): Set<string> {
  return new Set(dashboardExpressions(dashboard).flatMap((expr) => parsePromql(expr).metrics))
}

/** A name in the scrape, or a histogram's (or summary's) _bucket/_sum/_count series of one. */
function metricExists(name: string, types: Map<string, string>): boolean {
  if (types.has(name)) return true
  const match = /^(.*)_(bucket|sum|count)$/.exec(name)
  if (!match) return false
  const type = types.get(match[1]!)
  return type === 'histogram' || (type === 'summary' && match[2] !== 'bucket')
}

describe('Grafana dashboard (deploy/grafana/oe-node.json)', () => {
  test('every query is valid PromQL (Prometheus’s grammar) selecting oe_ metrics only', async () => {
    const dashboard = JSON.parse(await readFile(join(DEPLOY, 'grafana', 'oe-node.json'), 'utf8')) as Dashboard
    const expressions = dashboardExpressions(dashboard)
    expect(expressions.length).toBeGreaterThanOrEqual(30)
    const problems = expressions.flatMap((expr) => {
      const { errors, metrics } = parsePromql(expr)
      return [
        ...errors.map((at) => `${expr}: syntax error at ${at}`),
        ...(metrics.length === 0 ? [`${expr}: selects no metric`] : []),
        ...metrics.filter((name) => !name.startsWith('oe_')).map((name) => `${expr}: ${name} is not ours`),
      ]
    })
    expect(problems).toEqual([])
    // The grammar does refuse: an unclosed call, and a range without a duration.
    expect(parsePromql('sum(rate(oe_ingest_records_total[5m])').errors.length).toBeGreaterThan(0)
    expect(parsePromql('rate(oe_ingest_records_total[])').errors.length).toBeGreaterThan(0)
    expect(parsePromql('max by (lease) (oe_lease_owned{replica="a"}) == 1')).toEqual({
      errors: [],
      metrics: ['oe_lease_owned'],
    })
  })

  test('covers ingest, flows, drops, lag, peer RTT, OCPP stations and leases', async () => {
    const dashboard = JSON.parse(await readFile(join(DEPLOY, 'grafana', 'oe-node.json'), 'utf8')) as Dashboard
    const names = dashboardMetricNames(dashboard)
    for (const name of [
      'oe_ingest_records_total',
      'oe_federation_records',
      'oe_federation_dropped_records',
      'oe_federation_lag_records',
      'oe_federation_peer_rtt_seconds',
      'oe_plugin_ocpp_stations_connected',
      'oe_lease_owned',
      'oe_replicas',
    ])
      expect(names, name).toContain(name)
    // Well formed: unique ids, inside the 24-column grid, a data source on every query.
    const ids = dashboard.panels.map((panel) => panel.id)
    expect(new Set(ids).size).toBe(ids.length)
    for (const panel of dashboard.panels) {
      expect(panel.gridPos.x + panel.gridPos.w, panel.title).toBeLessThanOrEqual(24)
      if (panel.type === 'row') continue
      expect(panel.targets?.length, panel.title).toBeGreaterThan(0)
      for (const target of panel.targets ?? []) {
        expect(target.datasource, panel.title).toEqual({ type: 'prometheus', uid: DATASOURCE_VARIABLE })
      }
    }
    expect(dashboard.templating.list.map((variable) => variable.name)).toEqual(['datasource', 'instance'])
  })
})

// ---- compose ----------------------------------------------------------------------------------

interface ComposeService {
  image?: string
  build?: { context: string; dockerfile: string }
  command?: string[]
  entrypoint?: string[]
  environment?: Record<string, string>
  depends_on?: Record<string, { condition: string }> | string[]
  volumes?: string[]
  ports?: string[]
  healthcheck?: { test: string[] }
}

describe('compose (deploy/compose.yaml)', () => {
  /** The nats-servers a test started from compose's nats.conf. */
  const natsServers: ChildProcess[] = []
  const stopNatsServers = () => {
    for (const child of natsServers.splice(0)) child.kill('SIGKILL')
  }
  afterAll(stopNatsServers)
  let services: Record<string, ComposeService>
  let volumes: Record<string, unknown>
  const group = (prefix: string) => Object.keys(services).filter((name) => name.startsWith(prefix))
  /** host path of a bind mount `./x:/y[:ro]`, or the named volume. */
  const mountOf = (service: ComposeService, target: string) => {
    const entry = service.volumes?.find((volume) => volume.split(':')[1] === target)
    return entry?.split(':')[0]
  }

  beforeAll(async () => {
    const compose = Bun.YAML.parse(await readFile(join(DEPLOY, 'compose.yaml'), 'utf8')) as {
      services: Record<string, ComposeService>
      volumes: Record<string, unknown>
    }
    services = compose.services
    volumes = compose.volumes
  })

  test('3 nats-servers and 3 oe-node replicas; images, builds, mounts and dependencies resolve', async () => {
    expect(group('nats-')).toEqual(['nats-1', 'nats-2', 'nats-3'])
    expect(group('oe-node-')).toEqual(['oe-node-1', 'oe-node-2', 'oe-node-3'])
    for (const [name, service] of Object.entries(services)) {
      expect(service.image, name).toMatch(/^[a-z0-9.-]+\/[a-z0-9./_-]+:[\w.-]+$/)
      if (service.build) {
        const context = resolve(DEPLOY, service.build.context)
        expect((await stat(join(context, service.build.dockerfile))).isFile(), name).toBe(true)
      }
      const dependencies = Array.isArray(service.depends_on)
        ? service.depends_on
        : Object.keys(service.depends_on ?? {})
      for (const dependency of dependencies) expect(Object.keys(services), name).toContain(dependency)
      for (const volume of service.volumes ?? []) {
        const source = volume.split(':')[0]!
        if (source.startsWith('.')) expect((await stat(resolve(DEPLOY, source))).isFile(), volume).toBe(true)
        else expect(Object.keys(volumes), `${name} ${volume}`).toContain(source)
      }
    }
    for (const name of group('nats-'))
      expect(services[name]!.command, name).toEqual(['-c', '/etc/nats/nats.conf'])
    for (const name of group('oe-node-')) {
      expect(services[name]!.command?.join('\n'), name).toContain(
        'exec oe-node start --config /etc/oe-node/config.toml',
      )
      expect(mountOf(services[name]!, '/etc/oe-node/config.toml'), name).toBe('./compose/oe-node.toml')
    }
  })

  test('each nats-server config passes `nats-server -t` and routes to all three', async () => {
    const path = resolve(DEPLOY, mountOf(services['nats-1']!, '/etc/nats/nats.conf')!)
    const text = await readFile(path, 'utf8')
    const routes = [...text.matchAll(/nats-route:\/\/([\w-]+):(\d+)/g)].map((match) => match[1])
    expect(routes.sort()).toEqual(group('nats-'))
    for (const name of group('nats-')) {
      expect(mountOf(services[name]!, '/etc/nats/nats.conf'), name).toBe('./compose/nats.conf')
      const result = await exec('nats-server', ['-c', path, '-t'], { env: services[name]!.environment ?? {} })
      expect(result.code, `${name}: ${result.stderr}`).toBe(0)
      expect(result.stderr).toContain('is valid')
    }
    // And -t does refuse: without its server name the same file is not valid.
    const bare = await exec('nats-server', ['-c', path, '-t'], { env: { SERVER_NAME: undefined } })
    expect(bare.code).not.toBe(0)
    expect(bare.stderr).toContain('SERVER_NAME')
  })

  test('oe-node.toml parses with the node schema and points at the three servers', async () => {
    const text = await readFile(resolve(DEPLOY, './compose/oe-node.toml'), 'utf8')
    const { config, plugins } = parseNodeConfig(text, 'deploy/compose/oe-node.toml')
    const hosts = config.nats.url!.split(',').map((url) => new URL(url))
    expect(hosts.map((url) => url.hostname)).toEqual(group('nats-'))
    expect(new Set(hosts.map((url) => url.port))).toEqual(new Set(['4222']))
    expect(plugins.map(({ definition }) => definition.id)).toEqual(['ocpp'])
    for (const name of group('oe-node-')) {
      const published = services[name]!.ports!.map((port) => Number(port.split(':').at(-1)))
      expect(published, name).toEqual([portOf(config.api.listen)])
      expect(services[name]!.healthcheck!.test.at(-1)).toBe(
        `http://127.0.0.1:${portOf(config.api.listen)}/readyz`,
      )
    }
  })

  test('every OE_NODE_* variable of a replica is a setting the node takes', async () => {
    for (const name of group('oe-node-')) {
      const env = Object.fromEntries(
        Object.entries(services[name]!.environment ?? {}).map(([key, value]) => [
          key,
          // Compose fills ${OE_INGEST_TOKEN:?…} in from the environment.
          value.startsWith('${') ? 'an-ingest-token-of-24-chars' : value,
        ]),
      )
      expect(env.OE_NODE_NODE_REPLICA_ID, name).toBe(name)
      const config = await loadConfig({ env })
      expect(config.api.ingest_tokens, name).toEqual(['an-ingest-token-of-24-chars'])
    }
  })

  test('a replica copies the organisation key before its first start and never again', async () => {
    const root = await tempDir('oe-compose-')
    const service = services['oe-node-1']!
    // The org-key service: `oe-node init` on the shared volume.
    const org = join(root, 'org')
    const init = await runCli(services['org-key']!.command!, { env: { OE_NODE_DATA_DIR: org } })
    expect(init.code, init.stderr).toBe(0)
    const bin = join(root, 'bin')
    await mkdir(bin)
    await writeFile(join(bin, 'oe-node'), `#!/bin/sh\necho "$@" > "${root}/started"\n`, { mode: 0o755 })
    const script = service.command!.at(-1)!.replaceAll(/(\/(?:var|run)\/)/g, `${root}$1`)
    // The org volume is mounted at /run/oe-node/org.
    await mkdir(join(root, 'run', 'oe-node'), { recursive: true })
    await symlink(org, join(root, 'run', 'oe-node', 'org'))
    await mkdir(join(root, 'var', 'lib', 'oe-node'), { recursive: true, mode: 0o700 })
    const env = { PATH: `${bin}:${process.env.PATH}` }
    expect((await exec('/bin/sh', ['-ec', script], { env })).code).toBe(0)
    const key = join(root, 'var', 'lib', 'oe-node', 'keys', 'node.key')
    expect((await stat(key)).mode & 0o777).toBe(0o600)
    expect(await readFile(key, 'utf8')).toBe(await readFile(join(org, 'keys', 'node.key'), 'utf8'))
    expect((await readFile(join(root, 'started'), 'utf8')).trim()).toBe(
      'start --config /etc/oe-node/config.toml',
    )
    // A second start keeps the replica's key, whatever the shared volume now holds.
    await writeFile(join(org, 'keys', 'node.key'), 'changed', { mode: 0o600 })
    expect((await exec('/bin/sh', ['-ec', script], { env })).code).toBe(0)
    expect(await readFile(key, 'utf8')).not.toBe('changed')
  })

  test('the load balancer sends libp2p, OCPP and ingest to the replicas’ ports', async () => {
    const path = resolve(DEPLOY, mountOf(services.lb!, '/usr/local/etc/haproxy/haproxy.cfg')!)
    const text = await readFile(path, 'utf8')
    const { config, plugins } = parseNodeConfig(
      await readFile(resolve(DEPLOY, './compose/oe-node.toml'), 'utf8'),
      'oe-node.toml',
    )
    const ocpp = portOf((plugins[0]!.config as { listen: string }).listen)
    const expected: Record<string, number> = {
      libp2p: tcpPortOf(config.federation.listen[0]!),
      ocpp,
      ingest: portOf(config.api.listen),
    }
    for (const [backend, port] of Object.entries(expected)) {
      const block = new RegExp(`^backend ${backend}\\n((?:  .*\\n)+)`, 'm').exec(text)?.[1] ?? ''
      const servers = [...block.matchAll(/server (\S+) ([\w-]+):(\d+)/g)]
      expect(
        servers.map((match) => match[2]),
        backend,
      ).toEqual(group('oe-node-'))
      expect(new Set(servers.map((match) => Number(match[3]))), backend).toEqual(new Set([port]))
      expect(text, backend).toMatch(new RegExp(`frontend ${backend}\\n  bind :${port}\\n`))
    }
    expect(services.lb!.ports!.map((port) => Number(port.split(':')[0]))).toEqual(Object.values(expected))
  })

  test('nats.conf forms a 3-server JetStream cluster on which a replica keeps 3 copies', async () => {
    // compose's nats.conf as is, but for what Docker gives each container: its own address and
    // ports (here loopback and free ports) and the /data volume (a temp dir).
    const text = await readFile(resolve(DEPLOY, 'compose', 'nats.conf'), 'utf8')
    const names = group('nats-')
    const ports = new Map<string, { client: number; route: number }>()
    for (const name of names) ports.set(name, { client: await freePort(), route: await freePort() })
    for (const name of names) {
      const dir = await tempDir('oe-compose-nats-')
      const own = ports.get(name)!
      const config = text
        .replace('listen: 0.0.0.0:4222', `listen: 127.0.0.1:${own.client}`)
        .replace(/^http: .*$/m, '')
        .replace('store_dir: /data/jetstream', `store_dir: "${join(dir, 'jetstream')}"`)
        .replace('listen: 0.0.0.0:6222', `listen: 127.0.0.1:${own.route}`)
        .replaceAll(
          /nats-route:\/\/([\w-]+):6222/g,
          (_, host: string) => `nats-route://127.0.0.1:${ports.get(host)!.route}`,
        )
      await writeFile(join(dir, 'nats.conf'), config)
      const child = spawn('nats-server', ['-c', join(dir, 'nats.conf')], {
        env: { ...process.env, ...services[name]!.environment },
        stdio: 'ignore',
      })
      natsServers.push(child)
    }
    try {
      const urls = names.map((name) => `nats://127.0.0.1:${ports.get(name)!.client}`).join(',')
      const connection = await waitForValue(() => connect({ servers: urls, timeout: 1_000 }), 'the cluster')
      // Ready once the servers have elected a JetStream meta leader.
      const jsm = await waitForValue(() => jetstreamManager(connection), 'a JetStream meta leader')

      const config = parseToml(await readFile(resolve(DEPLOY, 'compose', 'oe-node.toml'), 'utf8')) as {
        nats: Record<string, unknown>
        plugins: Record<string, Record<string, unknown>>
      }
      config.nats.url = urls
      config.plugins.ocpp!.listen = '127.0.0.1:0'
      const replica = await startNode({
        config: stringifyToml(config),
        env: {
          OE_NODE_NODE_REPLICA_ID: 'oe-node-1',
          OE_NODE_API_INGEST_TOKENS: 'an-ingest-token-of-24-chars',
        },
      })
      const records = Array.from({ length: 1_000 }, (_, i) => ({
        kind: 'meter',
        rid: `nmi-${i % 50}`,
        q: 'power',
        v: i,
        t: Date.now() - 1_000 + i,
      }))
      const posted = await replica.fetch('/v1/telemetry', {
        method: 'POST',
        token: 'an-ingest-token-of-24-chars',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(records),
      })
      expect(await posted.json()).toMatchObject({ accepted: 1_000, rejected: 0 })
      const info = await jsm.streams.info('OE_TEL')
      expect(info.config.num_replicas).toBe(3)
      expect(info.state.messages).toBe(1_000)
      expect(info.cluster?.name).toBe('oe')
      expect(
        [info.cluster?.leader, ...(info.cluster?.replicas ?? []).map((peer) => peer.name)].sort(),
      ).toEqual(names)
      await replica.stop()
      await connection.close()
    } finally {
      stopNatsServers()
    }
  })

  const haproxy = Bun.which('haproxy')
  test.skipIf(!haproxy)(
    'haproxy -c accepts the load balancer config (when haproxy is installed)',
    async () => {
      const path = resolve(DEPLOY, 'compose', 'haproxy.cfg')
      const result = await exec(haproxy!, ['-c', '-f', path], { env: { OE_INGEST_TOKEN: 'x'.repeat(24) } })
      expect(result.code, result.stderr).toBe(0)
    },
  )
})
