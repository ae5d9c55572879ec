#!/usr/bin/env bash
# Installs the system tools Postern's demo, tests and benchmark drive, when
# missing: PostgreSQL server and client, openssl, pgbouncer (benchmark), a JRE
# with the PostgreSQL JDBC driver (driver tests), chromium (the dashboard's
# browser tests), haproxy (load-balancer tests). Debian/Ubuntu, as root or
# with passwordless sudo. Cheap to rerun when everything is present.
# Used by the README's first command and by .ci/run.
set -euo pipefail

phase() { printf '\n==== %s ====\n' "$*"; }

# ---------------------------------------------------------------------------
phase "check node"
if ! command -v node >/dev/null 2>&1; then
  echo "node is not installed; Postern needs Node.js 20 or later" >&2
  exit 1
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
  echo "node $(node --version) is too old; Postern needs Node.js 20 or later" >&2
  exit 1
fi
echo "node $(node --version), npm $(npm --version)"

# ---------------------------------------------------------------------------
phase "system packages"
have_glob() { compgen -G "$1" >/dev/null; }

missing=()
# Server binaries live outside PATH on Debian; the tests look for initdb there.
have_glob '/usr/lib/postgresql/*/bin/initdb' || missing+=(postgresql)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
{ command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ]; } || missing+=(pgbouncer)
command -v javac >/dev/null 2>&1 || missing+=(default-jdk-headless)
[ -e /usr/share/java/postgresql.jar ] || missing+=(libpostgresql-jdbc-java)
# The dashboard's browser tests (test/browser) drive Debian's chromium through playwright-core.
[ -x /usr/bin/chromium ] || missing+=(chromium)
# Two Postern instances behind a real TCP load balancer (cancel forwarding between instances).
{ command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ]; } || missing+=(haproxy)

if [ "${#missing[@]}" -eq 0 ]; then
  echo "all present"
else
  echo "installing: ${missing[*]}"
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo=(sudo -n)
    else
      echo "not root and no sudo: install ${missing[*]} first" >&2
      exit 1
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Keep package scripts from starting the stock postgresql/pgbouncer services
  # while installing (the Docker convention: policy-rc.d exiting 101 = "deny").
  # Only a file we created ourselves is removed again.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    ${sudo[@]+"${sudo[@]}"} sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
    trap '${sudo[@]+"${sudo[@]}"} rm -f "$policy"' EXIT
  fi
  ${sudo[@]+"${sudo[@]}"} apt-get update -q
  ${sudo[@]+"${sudo[@]}"} apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
  stop_services=1
fi

# The stock services must not hold ports (5432, 6432) or files the tests use.
# Without systemd, `service` drives the SysV scripts; every step may fail
# harmlessly when the service was never started or does not exist.
if [ "${stop_services:-0}" = 1 ] || [ "${CI:-}" = true ]; then
  phase "stop system postgresql/pgbouncer/haproxy services"
  sudo_svc=()
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo_svc=(sudo -n); fi
  for svc in pgbouncer postgresql haproxy; do
    if [ -e "/etc/init.d/$svc" ]; then
      ${sudo_svc[@]+"${sudo_svc[@]}"} service "$svc" stop >/dev/null 2>&1 || true
      ${sudo_svc[@]+"${sudo_svc[@]}"} update-rc.d "$svc" disable >/dev/null 2>&1 || true
    fi
  done
  # Belt and braces: a daemon started some other way still left its pid file.
  # The process name is checked so a stale file cannot hit a reused pid.
  for pidfile in /var/run/postgresql/*.pid; do
    [ -e "$pidfile" ] || continue
    pid="$(head -n 1 "$pidfile" 2>/dev/null || true)"
    case "$pid" in
      '' | *[!0-9]*) continue ;;
    esac
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
    case "$comm" in
      postgres | pgbouncer) ${sudo_svc[@]+"${sudo_svc[@]}"} kill -TERM "$pid" >/dev/null 2>&1 || true ;;
    esac
  done
  echo "done"
fi

