#!/usr/bin/env bash
# Makes sure PostgreSQL's server binaries are installed (Debian's `postgresql`), for the tests
# that run against a real database (DESIGN §12). It never starts a server: each test run starts
# its own private cluster (testkit/, `PgCluster`) on a free 127.0.0.1 port and stops it.
# Idempotent and quick when the binaries are present.
set -euo pipefail

say() { echo "postgres: $*"; }

if compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  say "PostgreSQL is not installed and this is not root: run 'apt-get install postgresql' as root" >&2
  exit 1
fi

say "installing Debian postgresql"
# Debian's package would create and start a default cluster on port 5432; the tests need only
# the binaries, so ask postgresql-common not to create one (its documented switch).
mkdir -p /etc/postgresql-common
if ! grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf; then
  echo 'create_main_cluster = false' >> /etc/postgresql-common/createcluster.conf
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Keep the createcluster.conf written above if dpkg asks about it.
apt-get install -y -qq -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
  postgresql >/dev/null

if ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
  say "apt-get installed postgresql but no /usr/lib/postgresql/*/bin/postgres exists" >&2
  exit 1
fi
say "installed $(ls -d /usr/lib/postgresql/*/bin/postgres | tail -1)"
