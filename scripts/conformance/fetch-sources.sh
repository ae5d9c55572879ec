#!/usr/bin/env bash
# Fetches and builds what the conformance suites (scripts/conformance/run.mjs)
# need, into a cache directory outside version control (default .conformance/
# at the repository root, gitignored; POSTERN_CONFORMANCE_DIR overrides it):
#   - the Debian source of postgresql-<major> at exactly the installed server's
#     version (its regression SQL and expected files must match the binaries),
#     with regress.so, autoinc.so and refint.so built by PGXS against the
#     installed server (postgresql-server-dev-<major> of the same version);
#   - Debian's node-postgres source (node-postgres's monorepo at a pinned
#     release, with its licence) and the npm packages its tests load.
# Sources come from apt (deb-src lines derived from the machine's own apt
# sources, in a private apt config so the system's lists stay untouched) and
# from the npm registry: the only two registries CI reaches. Idempotent: a
# finished step leaves a stamp and is skipped on the next run. Debian, as root
# or with passwordless sudo.
set -euo pipefail
# A failing command inside $(...) must stop the script too.
shopt -s inherit_errexit

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root="$(pwd)"

# Pinned: the driver tests must behave the same on every run. 8.8.0 is the
# release Debian bookworm packages (its source package is the one registry
# copy of node-postgres's tests).
NODE_POSTGRES_VERSION='8.8.0'
NODE_POSTGRES_DEB_VERSION='8.8.0+~cs35.9.20-1'

cache="${POSTERN_CONFORMANCE_DIR:-$root/.conformance}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"

phase() { printf '\n==== %s ====\n' "$*"; }
die() {
  echo "fetch-sources: $*" >&2
  exit 1
}

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || die "not root and no sudo: cannot install packages"
  sudo=(sudo -n)
fi
as_root() { ${sudo[@]+"${sudo[@]}"} "$@"; }

# ---------------------------------------------------------------------------
phase "installed PostgreSQL server"
# The server the tests start is the newest major under /usr/lib/postgresql
# (what src/dev/cluster.ts picks without POSTERN_PG_BIN).
major=""
for d in /usr/lib/postgresql/*/bin/initdb; do
  [ -x "$d" ] || continue
  v="$(basename "$(dirname "$(dirname "$d")")")"
  if [ -z "$major" ] || [ "$v" -gt "$major" ]; then major="$v"; fi
done
[ -n "$major" ] || die "no PostgreSQL server under /usr/lib/postgresql (run scripts/install-deps.sh first)"
server_pkg="postgresql-$major"
server_version="$(dpkg-query -W -f='${Version}' "$server_pkg" 2>/dev/null)" ||
  die "$server_pkg is not an installed Debian package; cannot tell which source matches it"
source_pkg="$(dpkg-query -W -f='${source:Package}' "$server_pkg")"
source_version="$(dpkg-query -W -f='${source:Version}' "$server_pkg")"
echo "$server_pkg $server_version (source $source_pkg $source_version)"
pgbin="/usr/lib/postgresql/$major/bin"

# ---------------------------------------------------------------------------
phase "build packages"
missing=()
dpkg-query -W -f='${Status}' dpkg-dev 2>/dev/null | grep -q 'ok installed' || missing+=(dpkg-dev)
dpkg-query -W -f='${Status}' build-essential 2>/dev/null | grep -q 'ok installed' || missing+=(build-essential)
# The headers and PGXS must be those of the running server, not the newest
# candidate (a security update may be available that is not installed).
dev_version="$(dpkg-query -W -f='${Version}' "postgresql-server-dev-$major" 2>/dev/null || true)"
if [ "$dev_version" != "$server_version" ]; then missing+=("postgresql-server-dev-$major=$server_version"); fi
if [ "${#missing[@]}" -eq 0 ]; then
  echo "all present"
else
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  install() { as_root apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null; }
  # Lists may be stale on a machine that was never updated; refresh once then.
  install || { as_root apt-get update -q && install; } ||
    die "could not install ${missing[*]} (is version $server_version of postgresql-server-dev-$major still in the archive?)"
fi
[ -x "$pgbin/pg_config" ] || die "$pgbin/pg_config missing after installing postgresql-server-dev-$major"
pgxs="$("$pgbin/pg_config" --pgxs)"
[ -x "$(dirname "$pgxs")/../test/regress/pg_regress" ] || die "pg_regress not found next to $pgxs"

# ---------------------------------------------------------------------------
phase "private apt config (deb-src)"
apt_dir="$cache/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/sources.list.d"
codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
[ -n "$codename" ] || die "cannot read VERSION_CODENAME from /etc/os-release"
# deb-src twins of the machine's own Debian entries for this release (its
# suites: codename, -updates, -security), so the mirror is whatever the
# machine already uses. Third-party entries have no matching sources.
: >"$apt_dir/sources.list"
rm -f "$apt_dir/sources.list.d/"*.sources
shopt -s nullglob
for f in /etc/apt/sources.list.d/*.sources; do
  # deb822 stanzas, separated by blank lines.
  awk -v cn="$codename" '
    function flush() {
      if (types ~ /(^| )deb( |$)/ && suites != "") {
        n = split(suites, s, " "); keep = ""
        for (i = 1; i <= n; i++) if (s[i] == cn || index(s[i], cn "-") == 1) keep = keep " " s[i]
        if (keep != "") {
          print "Types: deb-src"; print "URIs:" uris; print "Suites:" keep; print "Components:" comps
          if (signed != "") print "Signed-By:" signed
          print ""
        }
      }
      types = ""; uris = ""; suites = ""; comps = ""; signed = ""
    }
    /^[ \t]*$/ { flush(); next }
    /^#/ { next }
    /^Types:/ { sub(/^Types:[ \t]*/, ""); types = $0; next }
    /^URIs:/ { sub(/^URIs:/, ""); uris = $0; next }
    /^Suites:/ { sub(/^Suites:[ \t]*/, ""); suites = $0; next }
    /^Components:/ { sub(/^Components:/, ""); comps = $0; next }
    /^Signed-By:/ { sub(/^Signed-By:/, ""); signed = $0; next }
    END { flush() }
  ' "$f" >>"$apt_dir/sources.list.d/debian-src.sources"
done
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
  [ -r "$f" ] || continue
  # One-line format: "deb [opts] URI suite components...".
  awk -v cn="$codename" '
    $1 == "deb" {
      i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
      suite = $(i + 1)
      if (suite == cn || index(suite, cn "-") == 1) { $1 = "deb-src"; print }
    }
  ' "$f" >>"$apt_dir/sources.list"
done
shopt -u nullglob
if ! grep -q 'deb-src' "$apt_dir/sources.list" "$apt_dir/sources.list.d/"*.sources 2>/dev/null; then
  die "no Debian $codename entries in /etc/apt to derive deb-src lines from"
fi
apt_opts=(
  -o "Dir::Etc::SourceList=$apt_dir/sources.list"
  -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
  -o "Dir::State::Lists=$apt_dir/lists"
  -o "Dir::Cache=$apt_dir/cache"
  # Our private dirs are not readable by apt's sandbox user; nothing runs as root but the download.
  -o "APT::Sandbox::User=root"
)
stamp="$apt_dir/updated"
# Source lists change with point releases; refresh them at most once a day.
if [ ! -e "$stamp" ] || [ -n "$(find "$stamp" -mmin +1440 2>/dev/null)" ]; then
  apt-get "${apt_opts[@]}" update -q
  touch "$stamp"
else
  echo "source lists fresh (refreshed $(date -r "$stamp" '+%F %T'))"
fi

# Downloads and unpacks source package $1 at version $2 into $cache/src once;
# prints the unpacked directory. Returns 1 (with the reason on stderr) when the
# archive does not have that version or will not serve its files.
fetch_source() {
  local pkg="$1" version="$2"
  local dest="$cache/src/$pkg-$version"
  if [ -e "$dest/.postern-ok" ]; then
    echo "$dest"
    return 0
  fi
  if ! apt-get "${apt_opts[@]}" source --print-uris "$pkg=$version" 2>/dev/null | grep -q "\.dsc'"; then
    echo "fetch-sources: source package $pkg version $version is not in the archive; versions available:" >&2
    apt-cache "${apt_opts[@]}" showsrc "$pkg" 2>/dev/null | awk '/^Version:/ {print "  " $2}' >&2
    return 1
  fi
  local dl="$cache/dl/$pkg"
  rm -rf "$dest" "$dl"
  mkdir -p "$dl" "$cache/src"
  # apt checks every file against the signed Release's hashes.
  if ! (cd "$dl" && apt-get "${apt_opts[@]}" source -q --download-only "$pkg=$version" >&2); then
    echo "fetch-sources: the archive lists $pkg $version but would not serve all of its files (see above)" >&2
    rm -rf "$dl"
    return 1
  fi
  # Unpacks and applies Debian's patches (they can change expected output).
  # Unpacked next to the download, then moved, so no copies of the tarballs
  # are left beside the tree.
  (cd "$dl" && dpkg-source --no-check -x ./*.dsc tree >&2)
  mv "$dl/tree" "$dest"
  rm -rf "$dl"
  touch "$dest/.postern-ok"
  echo "$dest"
}

# ---------------------------------------------------------------------------
phase "source $source_pkg $source_version"
pg_src="$(fetch_source "$source_pkg" "$source_version")" ||
  die "the regression suite must come from the source of the installed server ($source_pkg $source_version)"
echo "$pg_src"
[ -f "$pg_src/src/test/regress/parallel_schedule" ] || die "$pg_src has no src/test/regress/parallel_schedule"

# ---------------------------------------------------------------------------
phase "regress.so, autoinc.so, refint.so (PGXS)"
lib="$cache/lib/$major-$server_version"
if [ -e "$lib/.postern-ok" ]; then
  echo "built: $lib"
else
  rm -rf "$lib"
  mkdir -p "$lib"
  build="$cache/build/$major-$server_version"
  rm -rf "$build"
  mkdir -p "$build"
  # The regression suite's C functions (regress.c, built as its in-tree
  # Makefile would, as one module) and contrib/spi's trigger functions that
  # the triggers test loads from PG_LIBDIR; spi's own Makefile builds them
  # with its flags (REFINT_VERBOSE: the expected output has its NOTICEs).
  cp "$pg_src/src/test/regress/regress.c" "$build/"
  printf 'MODULES = regress\nPG_CONFIG = %s\nPGXS := $(shell $(PG_CONFIG) --pgxs)\ninclude $(PGXS)\n' \
    "$pgbin/pg_config" >"$build/Makefile"
  make -s -C "$build" >/dev/null
  cp -r "$pg_src/contrib/spi" "$build/spi"
  make -s -C "$build/spi" USE_PGXS=1 PG_CONFIG="$pgbin/pg_config" autoinc.so refint.so >/dev/null
  cp "$build/spi/autoinc.so" "$build/spi/refint.so" "$build/"
  cp "$build/regress.so" "$build/autoinc.so" "$build/refint.so" "$lib/"
  touch "$lib/.postern-ok"
  echo "built: $lib"
fi

# ---------------------------------------------------------------------------
phase "node-postgres $NODE_POSTGRES_VERSION"
# Its integration tests are not in any npm tarball of pg; Debian's source
# package is the only registry copy of the monorepo. A developer may point
# POSTERN_NODE_POSTGRES_SRC at an unpacked copy of the same release instead.
np_src=""
np_reason=""
if [ -n "${POSTERN_NODE_POSTGRES_SRC:-}" ]; then
  np_src="$(cd "$POSTERN_NODE_POSTGRES_SRC" && pwd)"
  echo "from POSTERN_NODE_POSTGRES_SRC: $np_src"
elif np_src="$(fetch_source node-postgres "$NODE_POSTGRES_DEB_VERSION")"; then
  echo "$np_src"
else
  np_src=""
  np_reason="Debian source package node-postgres $NODE_POSTGRES_DEB_VERSION could not be downloaded (set POSTERN_NODE_POSTGRES_SRC to an unpacked node-postgres pg@$NODE_POSTGRES_VERSION)"
fi
if [ -n "$np_src" ]; then
  np_version="$(node -p 'require(process.argv[1]).version' "$np_src/packages/pg/package.json" 2>/dev/null || true)"
  if [ "$np_version" != "$NODE_POSTGRES_VERSION" ]; then
    die "$np_src/packages/pg/package.json says version '${np_version}', expected $NODE_POSTGRES_VERSION (the expectation files are for that release)"
  fi
  [ -d "$np_src/packages/pg/test/integration" ] || die "$np_src has no packages/pg/test/integration"
  phase "npm packages for node-postgres's tests"
  # The release's own lib/ runs; what it and its tests require comes from npm
  # into the cache (never this project's package.json), at the versions its
  # packages/pg/package.json names, with ranges pinned to what they resolved
  # to at its release (this registry's publish dates cannot tell).
  deps="$cache/pg-deps"
  mkdir -p "$deps"
  cat >"$deps/package.json.new" <<'JSON'
{
  "name": "postern-conformance-pg-deps",
  "private": true,
  "description": "What node-postgres pg@8.8.0's lib and integration tests require",
  "dependencies": {
    "buffer-writer": "2.0.0",
    "packet-reader": "1.0.0",
    "pg-connection-string": "2.5.0",
    "pg-pool": "3.5.2",
    "pg-protocol": "1.5.0",
    "pg-types": "2.2.0",
    "pgpass": "1.0.5",
    "async": "2.6.4",
    "bluebird": "3.5.2",
    "co": "4.6.0",
    "pg-copy-streams": "0.3.0"
  }
}
JSON
  if cmp -s "$deps/package.json.new" "$deps/package.json" && [ -e "$deps/.postern-ok" ]; then
    rm "$deps/package.json.new"
  else
    mv "$deps/package.json.new" "$deps/package.json"
    rm -f "$deps/.postern-ok"
    npm install --prefix "$deps" --legacy-peer-deps --no-audit --no-fund --ignore-scripts --no-package-lock --loglevel=error </dev/null
    touch "$deps/.postern-ok"
  fi
  # Node resolves a require() by walking up from the requiring file, so a
  # node_modules at the source's root wins over whatever lies further up
  # (this repository's own node_modules, when the cache is inside it).
  if [ ! -e "$np_src/node_modules" ] || [ -L "$np_src/node_modules" ]; then
    ln -sfn "$deps/node_modules" "$np_src/node_modules"
  fi
  echo "installed: $deps/node_modules"
else
  echo "fetch-sources: WARNING: $np_reason" >&2
  echo "fetch-sources: the node-postgres suite will be reported as unavailable" >&2
fi

# ---------------------------------------------------------------------------
# What run.mjs reads: where everything is.
cat >"$cache/sources.json" <<EOF
{
  "major": $major,
  "serverVersion": "$server_version",
  "pgSource": "$pg_src",
  "pgBin": "$pgbin",
  "pgRegress": "$(cd "$(dirname "$pgxs")/../test/regress" && pwd)/pg_regress",
  "dlpath": "$lib",
  "nodePostgresVersion": "$NODE_POSTGRES_VERSION",
  "nodePostgresSource": "$np_src",
  "nodePostgresUnavailable": "$np_reason",
  "pgDeps": "$cache/pg-deps"
}
EOF
phase "ok"
echo "cache: $cache"
