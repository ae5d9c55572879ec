# syntax=docker/dockerfile:1
# Postern's container image. Build from the repository root (the build
# context is the root; .dockerignore keeps it to what the steps below copy):
#
#   docker build -t postern:0.1.0 .
#   docker run --rm -p 6432:6432 -p 9187:9187 -v "$PWD/conf:/etc/postern:ro" postern:0.1.0
#
# The config is not baked in: mount a folder holding postern.yaml (and the
# files it names, by paths relative to it) at /etc/postern. It must set
# listen.host to 0.0.0.0 and admin.listen to 0.0.0.0:9187 for the ports and the
# health check below. deploy/kubernetes/configmap.yaml has a complete one.
# docs/operations.md explains every choice made here.
#
# test/integration/deploy.test.ts replays the runtime stage's steps outside
# Docker (no engine on CI): keep every RUN runnable with only Node and npm.

ARG NODE_VERSION=20

# ---- build: full install (TypeScript and its types), compile src/ to dist/ ----
FROM node:${NODE_VERSION}-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
RUN --mount=type=cache,target=/root/.npm npm ci --no-audit --no-fund
COPY src ./src
RUN npm run build

# ---- runtime: production dependencies and dist/ only, as a non-root user ----
FROM node:${NODE_VERSION}-bookworm-slim AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
# The npm cache lives in a build cache mount, so it never lands in a layer.
RUN --mount=type=cache,target=/root/.npm npm ci --omit=dev --no-audit --no-fund
COPY --from=build /src/dist ./dist
# uid/gid 1000 is the `node` user of the official image. Numeric, so that a
# Kubernetes runAsNonRoot check can verify it (deploy/kubernetes/deployment.yaml
# runs as the same ids).
USER 1000:1000
# 6432: client port (listen.port); 9187: /metrics, /healthz, /readyz (admin.listen).
EXPOSE 6432 9187
# Node is the only tool the image needs, so the check uses it too. (Kubernetes
# ignores HEALTHCHECK and uses the Deployment's probes instead.)
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:9187/healthz', { signal: AbortSignal.timeout(2000) }).then((r) => process.exit(r.status === 200 ? 0 : 1), () => process.exit(1))"]
# Exec form: node is PID 1 and receives SIGTERM (drain) and SIGHUP (reload) itself.
ENTRYPOINT ["node", "dist/main.js"]
CMD ["--config", "/etc/postern/postern.yaml"]
