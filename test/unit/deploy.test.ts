// The container and Kubernetes files, checked statically (no image is built
// and no cluster runs here): every manifest parses and validates against the
// Kubernetes API schema (kubernetes-models, generated from the upstream
// OpenAPI spec) and against our own strict subset (zod: unknown or misspelt
// fields are errors, which the upstream schema lets through); the ports,
// probe paths, user ids and grace period line up with Postern's settings
// table, the ConfigMap's config and the Dockerfile; the Secrets hold
// placeholders only; the ConfigMap's config passes `postern check` laid out
// as the pod sees it; the Grafana dashboard is well formed.
// test/integration/deploy.test.ts replays the image and runs it.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { after, describe, it } from 'node:test';
import { Deployment as K8sDeployment } from 'kubernetes-models/apps/v1/Deployment';
import { PodDisruptionBudget as K8sPodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import { ConfigMap as K8sConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Secret as K8sSecret } from 'kubernetes-models/v1/Secret';
import { Service as K8sService } from 'kubernetes-models/v1/Service';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { parseUsersFile } from '../../src/auth/secrets.ts';
import { validateConfig } from '../../src/config/load.ts';
import { type Config, SETTINGS } from '../../src/config/schema.ts';
import { METRICS } from '../../src/metrics/registry.ts';
import {
  buildContextFiles,
  byKind,
  containerPort,
  copyArgs,
  DASHBOARD,
  dashboardQueries,
  dockerIgnoreFilter,
  K8S_DIR,
  loadManifests,
  type Manifest,
  named,
  type Obj,
  ops,
  parseDockerfile,
  posternContainer,
  promRefs,
  readDockerfile,
  sourceData,
  volumeFiles,
  writeVolume,
  yamlFiles,
} from '../helpers/deploy.ts';
import { MAIN } from '../helpers/postern.ts';

const tmp = mkdtempSync(join(tmpdir(), 'postern-deploy-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

const manifests = loadManifests();
const { deployment, container } = posternContainer(manifests);
const podSpec = deployment.spec.template.spec as Obj;
const configMount = (container.volumeMounts as Obj[]).find((m) => m.mountPath === '/etc/postern') as Obj;
const dockerfile = readDockerfile();
const runtime = dockerfile.stages[dockerfile.stages.length - 1];
const pkg = JSON.parse(readFileSync('package.json', 'utf8')) as { version: string };

/** The default of a setting, from the settings table. */
function settingDefault(key: string): unknown {
  const row = SETTINGS.find((s) => s.key === key);
  assert.ok(row !== undefined, `no setting ${key}`);
  return row.default;
}

/** The pod's /etc/postern laid out under `root`; returns the config file path there. */
function layOutConfig(root: string): string {
  writeVolume(root, volumeFiles(manifests, deployment, configMount), podSpec.securityContext?.fsGroup);
  const i = (container.args as string[]).indexOf('--config');
  return join(root, (container.args as string[])[i + 1] as string);
}

const configFile = layOutConfig(join(tmp, 'pod'));
const config: Config = (() => {
  const raw = parseYaml(readFileSync(configFile, 'utf8'));
  const r = validateConfig(raw, join(configFile, '..'));
  assert.ok(r.ok, `the ConfigMap's postern.yaml is invalid: ${JSON.stringify(r.ok ? [] : r.problems)}`);
  return r.config;
})();
const rawConfig = parseYaml(sourceData(named(manifests, 'ConfigMap', 'postern-config'))['postern.yaml'] as string) as Obj;

function hostPort(s: string): { host: string; port: number } {
  const i = s.lastIndexOf(':');
  return { host: s.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(s.slice(i + 1)) };
}
const adminListen = hostPort(config.admin.listen ?? '');

// ---------------------------------------------------------------- schemas

const int = z.number().int();
const name = z.string().regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, 'a DNS-1123 label');
const stringMap = z.record(z.string(), z.string());
const metadata = z.strictObject({ name, labels: stringMap, annotations: stringMap.optional() });
const selector = z.strictObject({ matchLabels: stringMap });
const intOrString = z.union([int, z.string()]);
const probe = z.strictObject({
  httpGet: z.strictObject({ path: z.string().startsWith('/'), port: intOrString }),
  initialDelaySeconds: int.optional(),
  periodSeconds: int,
  timeoutSeconds: int,
  failureThreshold: int,
});
const keyToPath = z.strictObject({ key: z.string(), path: z.string(), mode: int.optional() });
const containerSchema = z.strictObject({
  name,
  image: z.string(),
  imagePullPolicy: z.enum(['Always', 'IfNotPresent', 'Never']),
  args: z.array(z.string()),
  ports: z.array(z.strictObject({ name: z.string().max(15), containerPort: int.min(1).max(65535), protocol: z.literal('TCP') })),
  readinessProbe: probe,
  livenessProbe: probe,
  lifecycle: z.strictObject({ preStop: z.strictObject({ exec: z.strictObject({ command: z.array(z.string()).min(1) }) }) }),
  resources: z.strictObject({ requests: stringMap, limits: stringMap }),
  securityContext: z.strictObject({
    allowPrivilegeEscalation: z.literal(false),
    readOnlyRootFilesystem: z.boolean(),
    capabilities: z.strictObject({ drop: z.array(z.string()) }),
  }),
  volumeMounts: z.array(z.strictObject({ name, mountPath: z.string().startsWith('/'), readOnly: z.boolean().optional() })),
});
const SCHEMAS: Record<string, z.ZodType> = {
  Deployment: z.strictObject({
    apiVersion: z.literal('apps/v1'),
    kind: z.literal('Deployment'),
    metadata,
    spec: z.strictObject({
      replicas: int.min(2),
      revisionHistoryLimit: int.optional(),
      selector,
      strategy: z.strictObject({
        type: z.literal('RollingUpdate'),
        rollingUpdate: z.strictObject({ maxSurge: intOrString, maxUnavailable: intOrString }),
      }),
      template: z.strictObject({
        metadata: z.strictObject({ labels: stringMap, annotations: stringMap.optional() }),
        spec: z.strictObject({
          automountServiceAccountToken: z.boolean(),
          terminationGracePeriodSeconds: int.min(1),
          securityContext: z.strictObject({
            runAsNonRoot: z.literal(true),
            runAsUser: int.min(1),
            runAsGroup: int.min(1),
            fsGroup: int.min(1),
            seccompProfile: z.strictObject({ type: z.enum(['RuntimeDefault', 'Localhost']) }),
          }),
          topologySpreadConstraints: z
            .array(
              z.strictObject({
                maxSkew: int.min(1),
                topologyKey: z.string(),
                whenUnsatisfiable: z.enum(['DoNotSchedule', 'ScheduleAnyway']),
                labelSelector: selector,
              }),
            )
            .optional(),
          containers: z.array(containerSchema).length(1),
          volumes: z.array(
            z.union([
              z.strictObject({
                name,
                projected: z.strictObject({
                  defaultMode: int.min(0).max(0o777),
                  sources: z.array(
                    z.union([
                      z.strictObject({ configMap: z.strictObject({ name, items: z.array(keyToPath) }) }),
                      z.strictObject({ secret: z.strictObject({ name, items: z.array(keyToPath) }) }),
                    ]),
                  ),
                }),
              }),
              z.strictObject({
                name,
                emptyDir: z.strictObject({ sizeLimit: z.string().optional(), medium: z.literal('Memory').optional() }),
              }),
            ]),
          ),
        }),
      }),
    }),
  }),
  Service: z.strictObject({
    apiVersion: z.literal('v1'),
    kind: z.literal('Service'),
    metadata,
    spec: z.strictObject({
      type: z.literal('ClusterIP').optional(),
      clusterIP: z.literal('None').optional(),
      publishNotReadyAddresses: z.boolean().optional(),
      sessionAffinity: z.enum(['None', 'ClientIP']).optional(),
      selector: stringMap,
      ports: z.array(z.strictObject({ name, port: int.min(1).max(65535), targetPort: intOrString, protocol: z.literal('TCP') })).min(1),
    }),
  }),
  PodDisruptionBudget: z.strictObject({
    apiVersion: z.literal('policy/v1'),
    kind: z.literal('PodDisruptionBudget'),
    metadata,
    spec: z.strictObject({
      maxUnavailable: intOrString.optional(),
      minAvailable: intOrString.optional(),
      unhealthyPodEvictionPolicy: z.enum(['IfHealthyBudget', 'AlwaysAllow']).optional(),
      selector,
    }),
  }),
  ConfigMap: z.strictObject({ apiVersion: z.literal('v1'), kind: z.literal('ConfigMap'), metadata, data: stringMap }),
  Secret: z.strictObject({
    apiVersion: z.literal('v1'),
    kind: z.literal('Secret'),
    metadata,
    type: z.enum(['Opaque', 'kubernetes.io/tls']),
    stringData: stringMap.optional(),
    data: stringMap.optional(),
  }),
};

/** Upstream validators (generated from the Kubernetes OpenAPI spec). */
const UPSTREAM: Record<string, (o: Obj) => { validate(): void }> = {
  Deployment: (o) => new K8sDeployment(o as ConstructorParameters<typeof K8sDeployment>[0]),
  Service: (o) => new K8sService(o as ConstructorParameters<typeof K8sService>[0]),
  PodDisruptionBudget: (o) => new K8sPodDisruptionBudget(o as ConstructorParameters<typeof K8sPodDisruptionBudget>[0]),
  ConfigMap: (o) => new K8sConfigMap(o as ConstructorParameters<typeof K8sConfigMap>[0]),
  Secret: (o) => new K8sSecret(o as ConstructorParameters<typeof K8sSecret>[0]),
};

const where = (m: Manifest) => `${m.file} #${m.index} (${m.obj.kind} ${m.obj.metadata?.name})`;

// ---------------------------------------------------------------- manifests

describe('deploy/kubernetes', () => {
  it('every YAML document parses, is a kind we use, and validates against the Kubernetes schema and our strict subset', () => {
    assert.ok(yamlFiles(K8S_DIR).length >= 4);
    const counts: Record<string, number> = {};
    for (const m of manifests) {
      const kind = m.obj.kind as string;
      counts[kind] = (counts[kind] ?? 0) + 1;
      const schema = SCHEMAS[kind];
      assert.ok(schema !== undefined, `${where(m)}: unexpected kind`);
      const strict = schema.safeParse(m.obj);
      assert.ok(strict.success, `${where(m)}: ${strict.success ? '' : JSON.stringify(strict.error.issues)}`);
      assert.doesNotThrow(() => UPSTREAM[kind]?.(m.obj).validate(), `${where(m)} fails the Kubernetes schema`);
    }
    assert.deepEqual(counts, { ConfigMap: 1, Deployment: 1, PodDisruptionBudget: 1, Secret: 2, Service: 2 });
    const names = manifests.map((m) => `${m.obj.kind}/${m.obj.metadata.name}`);
    assert.equal(new Set(names).size, names.length, 'names are unique per kind');
  });

  it('the validators catch what they are for: a misspelt field (ours) and a wrong type (upstream)', () => {
    const typo = structuredClone(deployment);
    typo.spec.template.spec.terminationGracePeriodSecond = typo.spec.template.spec.terminationGracePeriodSeconds;
    delete typo.spec.template.spec.terminationGracePeriodSeconds;
    assert.equal(SCHEMAS.Deployment?.safeParse(typo).success, false);
    const wrongType = structuredClone(deployment);
    wrongType.spec.template.spec.containers[0].ports[0].containerPort = '6432';
    assert.throws(() => UPSTREAM.Deployment?.(wrongType).validate(), /must be integer/);
  });

  it('no YAML integer is written with a leading zero (YAML 1.1, which kubectl reads, takes it as octal; YAML 1.2 as decimal)', () => {
    for (const file of yamlFiles(K8S_DIR)) {
      const bad = readFileSync(file, 'utf8')
        .split('\n')
        .filter((l) => /:\s+0\d+\s*(#.*)?$/.test(l));
      assert.deepEqual(bad, [], file);
    }
  });

  it('the Services, the PodDisruptionBudget and the Deployment select the same pods', () => {
    const podLabels = deployment.spec.template.metadata.labels as Record<string, string>;
    const matches = (sel: Record<string, string>) => Object.entries(sel).every(([k, v]) => podLabels[k] === v);
    assert.ok(matches(deployment.spec.selector.matchLabels), 'Deployment selector');
    for (const s of byKind(manifests, 'Service')) assert.ok(matches(s.spec.selector), `Service ${s.metadata.name}`);
    const [pdb] = byKind(manifests, 'PodDisruptionBudget');
    assert.ok(matches(pdb?.spec.selector.matchLabels), 'PodDisruptionBudget');
    assert.ok(
      pdb?.spec.maxUnavailable === 1 || (pdb?.spec.minAvailable ?? 0) < deployment.spec.replicas,
      'the budget allows one pod to go',
    );
    for (const c of podSpec.topologySpreadConstraints ?? []) assert.ok(matches(c.labelSelector.matchLabels));
  });

  it("the ConfigMap's postern.yaml passes `postern check` laid out as the pod sees it", () => {
    const r = spawnSync(process.execPath, [MAIN, 'check', '--config', configFile], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /OK \(1 database\(s\)\)/);
  });

  it('the config listens on all addresses, serves the admin endpoints, and names its files relative to the mounted folder', () => {
    assert.equal(config.listen.host, '0.0.0.0');
    assert.ok(config.admin.listen !== undefined, 'admin.listen is set (no /healthz, /readyz or /metrics otherwise)');
    assert.equal(adminListen.host, '0.0.0.0');
    const pathKeys = SETTINGS.filter((s) => s.kind === 'path').map((s) => s.key);
    const values: string[] = [];
    const walk = (o: Obj, prefix: string) => {
      for (const [k, v] of Object.entries(o)) {
        const key = prefix === '' ? k : `${prefix}.${k}`;
        if (v !== null && typeof v === 'object' && !Array.isArray(v)) walk(v, key);
        else if (pathKeys.some((p) => new RegExp(`^${p.replace(/\./g, '\\.').replace(/\*/g, '[^.]+')}$`).test(key))) values.push(v);
      }
    };
    walk(rawConfig, '');
    assert.ok(values.length >= 4, 'certificates, key, hba and users files');
    for (const v of values) {
      assert.ok(!isAbsolute(v), `${v}: relative, so it resolves inside the mounted folder`);
      assert.ok(existsSync(join(configFile, '..', v)), `${v} is provided by the volume`);
    }
  });

  it("ports and probe paths match Postern's defaults, the ConfigMap's config, the Services and the Dockerfile", () => {
    assert.equal(config.listen.port, settingDefault('listen.port'), 'the client port is Postern’s default');
    assert.equal(containerPort(container, 'postgres'), config.listen.port);
    assert.equal(containerPort(container, 'admin'), adminListen.port);
    assert.deepEqual(
      (container.ports as Obj[]).map((p) => p.containerPort).sort(),
      [config.listen.port, adminListen.port].sort(),
      'exactly the two ports',
    );
    const probes = { readinessProbe: '/readyz', livenessProbe: '/healthz' } as const;
    for (const [probe, path] of Object.entries(probes)) {
      assert.equal(container[probe].httpGet.path, path, probe);
      assert.equal(containerPort(container, container[probe].httpGet.port), adminListen.port, `${probe} port`);
    }
    // The paths are the ones Postern's admin listener serves.
    const http = readFileSync('src/metrics/http.ts', 'utf8');
    for (const p of ['/healthz', '/readyz', '/metrics']) assert.ok(http.includes(`case '${p}':`), p);
    const ann = deployment.spec.template.metadata.annotations as Record<string, string>;
    assert.equal(Number(ann['prometheus.io/port']), adminListen.port);
    assert.equal(ann['prometheus.io/path'], '/metrics');
    const services = byKind(manifests, 'Service');
    const client = services.find((s) => s.spec.clusterIP !== 'None') as Obj;
    const peers = services.find((s) => s.spec.clusterIP === 'None') as Obj;
    assert.ok(client && peers, 'a client Service and a headless one');
    assert.equal(peers.spec.publishNotReadyAddresses, true, 'draining pods stay in the peer list');
    // Cancel forwarding: peers_dns names the headless Service on the client port, signed with a mounted secret.
    const [peerName, peerPort] = String(config.cluster.peers_dns).split(':');
    assert.equal(peerName, peers.metadata.name, 'cluster.peers_dns is the headless Service');
    assert.equal(Number(peerPort), config.listen.port, 'on the client port');
    assert.ok(config.cluster.secret !== undefined && config.cluster.secret.length >= 16, 'the secret file is mounted and read');
    assert.equal(client.spec.sessionAffinity, undefined, 'no affinity: cancels may land on any pod');
    for (const s of services) {
      for (const p of s.spec.ports as Obj[]) {
        const target = containerPort(container, p.targetPort);
        assert.ok([config.listen.port, adminListen.port].includes(target), `${s.metadata.name} ${p.name}`);
        if (p.name === 'postgres') assert.equal(target, config.listen.port);
      }
    }
    assert.deepEqual(
      (client.spec.ports as Obj[]).map((p) => containerPort(container, p.targetPort)),
      [config.listen.port],
      'the client Service exposes the client port only',
    );
    const exposed = ops(runtime!, 'EXPOSE').flatMap((i) => i.rest.split(/\s+/).map((p) => Number(p.replace(/\/tcp$/, ''))));
    assert.deepEqual(exposed.sort(), [config.listen.port, adminListen.port].sort(), 'EXPOSE');
    const [hc] = ops(runtime!, 'HEALTHCHECK');
    const url = /https?:\/\/[^'"\s]+/.exec(hc?.exec?.join(' ') ?? '')?.[0] ?? '';
    assert.equal(new URL(url).pathname, '/healthz');
    assert.equal(Number(new URL(url).port), adminListen.port);
  });

  it('terminationGracePeriodSeconds covers the preStop sleep, limits.shutdown_timeout and a margin', () => {
    const cmd = (container.lifecycle.preStop.exec.command as string[]).join(' ');
    const sleepMs = Number(/setTimeout\(\s*\(\)\s*=>\s*\{\s*\}\s*,\s*(\d+)\s*\)/.exec(cmd)?.[1]);
    assert.ok(sleepMs >= 1000 && sleepMs <= 30_000, `preStop sleeps a few seconds: ${cmd}`);
    assert.equal(container.lifecycle.preStop.exec.command[0], 'node', 'the image has node; it may not have sleep');
    const graceMs = (podSpec.terminationGracePeriodSeconds as number) * 1000;
    assert.ok(rawConfig.limits?.shutdown_timeout !== undefined, 'the ConfigMap states shutdown_timeout');
    const drainMs = config.limits.shutdown_timeout;
    // After the drain Postern ends the rest with 57P01 and waits up to 2 s for them to close.
    const marginMs = 5000;
    assert.ok(
      graceMs >= sleepMs + drainMs + marginMs,
      `grace ${graceMs} ms < preStop ${sleepMs} + shutdown_timeout ${drainMs} + margin ${marginMs}`,
    );
    assert.ok(graceMs <= sleepMs + drainMs + 60_000, 'and not so long that a stuck pod lingers');
    assert.equal(deployment.spec.strategy.rollingUpdate.maxUnavailable, 0);
  });

  it("the pod runs as the Dockerfile's non-root user and can read its mounted files", () => {
    const [user] = ops(runtime!, 'USER');
    const m = /^(\d+)(?::(\d+))?$/.exec(user?.rest ?? '');
    assert.ok(m !== null, `USER is numeric (runAsNonRoot can only verify a number): ${user?.rest}`);
    const [uid, gid] = [Number(m[1]), Number(m[2] ?? m[1])];
    assert.notEqual(uid, 0);
    const sc = podSpec.securityContext as Obj;
    assert.equal(sc.runAsNonRoot, true);
    assert.equal(sc.runAsUser, uid);
    assert.equal(sc.runAsGroup, gid);
    assert.equal(container.securityContext.allowPrivilegeEscalation, false);
    assert.deepEqual(container.securityContext.capabilities.drop, ['ALL']);
    // The kubelet owns projected files as root:fsGroup: the group bits must allow reading.
    for (const f of volumeFiles(manifests, deployment, configMount)) {
      const readable = sc.fsGroup === gid ? (f.mode & 0o040) !== 0 : (f.mode & 0o004) !== 0;
      assert.ok(readable, `${f.path} (mode ${f.mode.toString(8)}) is readable by ${uid}:${gid}`);
      assert.equal(f.mode & 0o002, 0, `${f.path} is not world-writable`);
    }
  });

  it('the container runs the image the way the Dockerfile does, tagged with the package version', () => {
    const [entry] = ops(runtime!, 'ENTRYPOINT');
    const [cmd] = ops(runtime!, 'CMD');
    assert.equal(container.command, undefined, 'the image ENTRYPOINT is kept');
    assert.deepEqual(container.args, cmd?.exec);
    assert.deepEqual(entry?.exec, ['node', 'dist/main.js']);
    assert.equal((container.image as string).split(':').pop(), pkg.version);
  });

  it('the Secrets hold placeholders only, and the ConfigMap no key', () => {
    const referenced = new Map<string, Set<string>>();
    for (const v of podSpec.volumes as Obj[]) {
      for (const s of (v.projected?.sources ?? []) as Obj[]) {
        const src = s.secret ?? s.configMap;
        const kind = s.secret ? 'Secret' : 'ConfigMap';
        for (const it of src.items) {
          const set = referenced.get(`${kind}/${src.name}`) ?? new Set<string>();
          set.add(it.key);
          referenced.set(`${kind}/${src.name}`, set);
        }
      }
    }
    for (const s of byKind(manifests, 'Secret')) {
      const data = sourceData(s);
      assert.ok(Object.keys(data).length > 0, s.metadata.name);
      for (const [k, v] of Object.entries(data)) {
        const what = `Secret ${s.metadata.name} ${k}`;
        assert.match(v, /REPLACE-ME/, `${what} is marked as a placeholder`);
        assert.doesNotMatch(v, /-----BEGIN/, `${what} holds no PEM`);
        assert.doesNotMatch(v, /SCRAM-SHA-256\$\d+:[A-Za-z0-9+/=]{8,}\$/, `${what} holds no SCRAM verifier`);
        assert.doesNotMatch(v, /md5[0-9a-f]{32}/, `${what} holds no MD5 hash`);
        if (k.endsWith('users.txt')) {
          const r = parseUsersFile(v, k);
          assert.deepEqual([r.users.size, r.errors], [0, []], `${what} parses and names no user`);
        }
      }
      const keys = referenced.get(`Secret/${s.metadata.name}`);
      assert.ok(keys !== undefined, `Secret ${s.metadata.name} is mounted`);
      assert.deepEqual([...keys].sort(), Object.keys(data).sort(), `Secret ${s.metadata.name}: every key is mounted`);
    }
    if (byKind(manifests, 'Secret').some((s) => s.type === 'kubernetes.io/tls')) {
      const tls = byKind(manifests, 'Secret').find((s) => s.type === 'kubernetes.io/tls') as Obj;
      assert.deepEqual(Object.keys(sourceData(tls)).sort(), ['tls.crt', 'tls.key']);
    }
    for (const c of byKind(manifests, 'ConfigMap')) {
      for (const [k, v] of Object.entries(c.data as Record<string, string>)) assert.doesNotMatch(v, /PRIVATE KEY|SCRAM-SHA-256\$\d/, k);
    }
    // The example Secrets sit in a subfolder so `kubectl apply -f deploy/kubernetes/` (not recursive) never applies them.
    for (const m of manifests.filter((x) => x.obj.kind === 'Secret')) assert.notEqual(join(m.file, '..'), K8S_DIR, m.file);
  });
});

// ---------------------------------------------------------------- Dockerfile

describe('Dockerfile', () => {
  const { stages } = dockerfile;
  const build = stages.find((s) => ops(s, 'RUN').some((r) => /\bnpm run build\b/.test(r.rest)));

  it('is multi-stage on Node 20: a build stage compiles, the runtime installs production dependencies and copies dist/', () => {
    assert.ok(stages.length >= 2);
    for (const s of stages) assert.match(s.image, /^node:20(-|$)/, `${s.name}: Node 20, what Postern is tested on`);
    assert.ok(build !== undefined && build !== runtime, 'a separate build stage runs npm run build');
    assert.ok(
      ops(build, 'RUN').some((r) => /\bnpm ci\b/.test(r.rest) && !/--omit=dev/.test(r.rest)),
      'the build stage installs dev dependencies (tsc)',
    );
    const runs = ops(runtime!, 'RUN').map((r) => r.rest);
    assert.ok(
      runs.some((r) => /\bnpm ci\b.*--omit=dev/.test(r)),
      'the runtime installs with --omit=dev',
    );
    assert.ok(!runs.some((r) => /\bnpm (run|install|i)\b/.test(r)), 'and builds nothing');
    const copies = ops(runtime!, 'COPY');
    const fromBuild = copies.filter((c) => c.flags.from === build.name);
    assert.deepEqual(
      fromBuild.map((c) => copyArgs(c).sources),
      [[`${ops(build, 'WORKDIR').pop()?.rest}/dist`]],
      'only dist/ comes from the build stage',
    );
    assert.ok(!copies.some((c) => copyArgs(c).sources.some((s) => /^(docs|test|bench|examples)\b/.test(s))), 'no docs or tests');
  });

  it('copies every input of `npm run build` into the build stage before running it', () => {
    const tsconfig = JSON.parse(readFileSync('tsconfig.build.json', 'utf8')) as { extends?: string; include: string[] };
    const needed = ['package.json', 'package-lock.json', 'tsconfig.build.json', ...tsconfig.include];
    if (tsconfig.extends) needed.push(tsconfig.extends.replace(/^\.\//, ''));
    assert.match(JSON.parse(readFileSync('package.json', 'utf8')).scripts.build, /tsconfig\.build\.json/);
    const copied: string[] = [];
    for (const ins of build!.instructions) {
      if (ins.op === 'RUN' && /\bnpm run build\b/.test(ins.rest)) break;
      if (ins.op === 'COPY') copied.push(...copyArgs(ins).sources.map((s) => s.replace(/^\.\//, '').replace(/\/$/, '')));
    }
    for (const n of needed) assert.ok(copied.includes(n), `the build stage copies ${n}`);
  });

  it('.dockerignore sends what the COPY lines need and nothing like node_modules, dist, .git or keys', () => {
    const context = buildContextFiles();
    for (const s of stages) {
      for (const c of ops(s, 'COPY').filter((x) => x.flags.from === undefined)) {
        for (const src of copyArgs(c).sources) {
          const p = src.replace(/^\.\//, '').replace(/\/$/, '');
          assert.ok(
            context.some((f) => f === p || f.startsWith(`${p}/`)),
            `COPY ${src} (line ${c.line}) finds it in the build context`,
          );
        }
      }
    }
    assert.ok(context.includes('src/main.ts'));
    for (const f of context) assert.doesNotMatch(f, /^(node_modules|dist|build|\.git|test|bench|deploy)\/|\.(key|pem)$/, f);
    // The matcher itself: Docker's rules (parents count, last match wins).
    const keep = dockerIgnoreFilter('*\n!src\nsrc/**/*.md\n');
    assert.deepEqual(['src/a.ts', 'src/x/README.md', 'README.md', 'node_modules/x/y.js'].map(keep), [true, false, false, false]);
  });

  it('runs as a numeric non-root user, checks /healthz with node, and starts `postern --config /etc/postern/postern.yaml`', () => {
    const last = runtime!.instructions.filter((i) => ['USER', 'ENTRYPOINT', 'CMD'].includes(i.op));
    assert.deepEqual(
      last.map((i) => i.op),
      ['USER', 'ENTRYPOINT', 'CMD'],
    );
    assert.match(ops(runtime!, 'USER')[0]?.rest ?? '', /^[1-9]\d*(:\d+)?$/);
    const [hc] = ops(runtime!, 'HEALTHCHECK');
    assert.ok(hc?.exec !== undefined, 'exec form: no shell needed');
    assert.equal(hc.exec[0], 'node');
    assert.match(hc.exec.join(' '), /\/healthz/);
    assert.deepEqual(ops(runtime!, 'ENTRYPOINT')[0]?.exec, ['node', 'dist/main.js']);
    assert.deepEqual(ops(runtime!, 'CMD')[0]?.exec, ['--config', '/etc/postern/postern.yaml']);
  });

  it('the parser reads continuations, flags, stage names and global ARGs', () => {
    const d = parseDockerfile(
      // biome-ignore lint/suspicious/noTemplateCurlyInString: Dockerfile variable syntax
      'ARG V=20\n# c\nFROM node:${V}-slim AS b\nRUN --mount=type=cache,target=/x a \\\n  b\nFROM node:$V\nCOPY --from=b /s/dist ./dist\n',
    );
    assert.deepEqual(
      d.stages.map((s) => [s.image, s.name]),
      [
        ['node:20-slim', 'b'],
        ['node:20', undefined],
      ],
    );
    assert.deepEqual(d.stages[0]?.instructions[0]?.flags, { mount: 'type=cache,target=/x' });
    assert.equal(d.stages[0]?.instructions[0]?.rest, 'a    b');
    assert.equal(d.stages[1]?.instructions[0]?.flags.from, 'b');
  });
});

// ---------------------------------------------------------------- Grafana

// biome-ignore lint/suspicious/noTemplateCurlyInString: Grafana's variable syntax, not a JavaScript template
const DATASOURCE_VAR = '${datasource}';
const datasourceRef = z.strictObject({ type: z.literal('prometheus'), uid: z.literal(DATASOURCE_VAR) });
const target = z.strictObject({
  refId: z.string().regex(/^[A-Z]$/),
  datasource: datasourceRef,
  expr: z.string().min(1),
  legendFormat: z.string(),
  instant: z.boolean().optional(),
  range: z.boolean().optional(),
});
const gridPos = z.strictObject({ h: int.min(1), w: int.min(1).max(24), x: int.min(0).max(23), y: int.min(0) });
const panel = z.union([
  z.strictObject({ type: z.literal('row'), id: int, title: z.string(), gridPos, collapsed: z.literal(false), panels: z.array(z.never()) }),
  z.strictObject({
    type: z.enum(['timeseries', 'stat']),
    id: int,
    title: z.string().min(1),
    description: z.string().min(1),
    datasource: datasourceRef,
    gridPos,
    fieldConfig: z.strictObject({ defaults: z.record(z.string(), z.unknown()), overrides: z.array(z.unknown()) }),
    options: z.record(z.string(), z.unknown()),
    targets: z.array(target).min(1),
  }),
]);
const dashboardSchema = z.strictObject({
  title: z.string(),
  uid: z.string().max(40),
  description: z.string(),
  tags: z.array(z.string()),
  editable: z.boolean(),
  graphTooltip: int,
  schemaVersion: int.min(36),
  version: int,
  refresh: z.string(),
  time: z.strictObject({ from: z.string(), to: z.string() }),
  timezone: z.string(),
  annotations: z.strictObject({ list: z.array(z.unknown()) }),
  links: z.array(z.unknown()),
  templating: z.strictObject({
    list: z.array(
      z.union([
        z.strictObject({ type: z.literal('datasource'), name: z.literal('datasource'), label: z.string(), query: z.literal('prometheus') }),
        z.strictObject({
          type: z.literal('query'),
          name: z.string(),
          label: z.string(),
          datasource: datasourceRef,
          query: z.strictObject({ query: z.string(), refId: z.string() }),
          definition: z.string(),
          refresh: z.literal(2),
          includeAll: z.boolean(),
          multi: z.boolean(),
          allValue: z.string().optional(),
          sort: int,
        }),
      ]),
    ),
  }),
  panels: z.array(panel).min(4),
});

describe('deploy/grafana/postern.json', () => {
  const dash = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as Obj;

  it('is a Grafana dashboard: known panel types, unique ids, a datasource variable on every query, a grid without overlaps', () => {
    const r = dashboardSchema.safeParse(dash);
    assert.ok(r.success, r.success ? '' : JSON.stringify(r.error.issues.slice(0, 5)));
    const panels = dash.panels as Obj[];
    const ids = panels.map((p) => p.id);
    assert.equal(new Set(ids).size, ids.length, 'unique panel ids');
    for (let i = 0; i < panels.length; i++) {
      const a = panels[i]?.gridPos as Obj;
      assert.ok(a.x + a.w <= 24, `panel ${panels[i]?.title} fits the 24 columns`);
      for (let j = 0; j < i; j++) {
        const b = panels[j]?.gridPos as Obj;
        const overlap = a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
        assert.ok(!overlap, `panels "${panels[i]?.title}" and "${panels[j]?.title}" overlap`);
      }
    }
    for (const p of panels) {
      const refIds = ((p.targets ?? []) as Obj[]).map((t) => t.refId);
      assert.equal(new Set(refIds).size, refIds.length, `${p.title}: unique refIds`);
    }
    const vars = (dash.templating.list as Obj[]).map((v) => v.name);
    for (const q of dashboardQueries(dash)) {
      for (const v of q.expr.matchAll(/\$\{?(\w+)\}?/g)) {
        if (!(v[1] as string).startsWith('__')) assert.ok(vars.includes(v[1]), `${q.where}: $${v[1]} is a dashboard variable`);
      }
    }
  });

  it('every expression parses into metric names, each one a Postern metric or a process metric of its registry', () => {
    const known = new Set(
      METRICS.flatMap((m) => (m.type === 'histogram' ? [`${m.name}_bucket`, `${m.name}_sum`, `${m.name}_count`] : [m.name])),
    );
    const queries = dashboardQueries(dash);
    assert.ok(queries.length >= 20);
    const used = new Set<string>();
    for (const q of queries) {
      const refs = promRefs(q.expr);
      assert.ok(refs.metrics.length > 0, `${q.where}: no metric found in ${q.expr}`);
      for (const m of refs.metrics) {
        assert.ok(known.has(m.name) || /^postern_(process|nodejs)_/.test(m.name), `${q.where}: unknown metric ${m.name}`);
        used.add(m.name);
      }
    }
    // The real /metrics output is compared in test/integration/deploy.test.ts; here, the extractor itself:
    assert.deepEqual(
      promRefs('histogram_quantile(0.99, sum by (le, database) (rate(a_bucket{instance=~"$instance"}[$__rate_interval]))) / on(x) b + 1e3'),
      {
        metrics: [
          { name: 'a_bucket', matcherLabels: ['instance'] },
          { name: 'b', matcherLabels: [] },
        ],
        groupingLabels: ['le', 'database', 'x'],
      },
    );
    assert.deepEqual(promRefs('label_values(c{database=~"$database"}, user)').valuesLabel, 'user');
    assert.ok(used.size >= 15, 'the dashboard covers the metrics');
  });
});
