#!/usr/bin/env bash
# Make sure PostgreSQL server binaries (initdb, pg_ctl) are present for the PostgreSQL tests; install the Debian
# package when they are missing. The tests start their own temporary cluster on loopback (tests/pg_server.py);
# nothing is configured system-wide and no service is started here.
# Without MEMOS_REQUIRE_POSTGRES=1 a failed install only warns (the PostgreSQL tests then skip with the reason).
set -euo pipefail
have_pg() {
  command -v pg_ctl >/dev/null 2>&1 && return 0
  compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null 2>&1
}
if have_pg; then exit 0; fi
echo "[postgres] server binaries missing: installing the Debian package 'postgresql'"
SUDO=()
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO=(sudo -n); fi
fi
if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = "0" ] || [ ${#SUDO[@]} -gt 0 ]; }; then
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -q >/dev/null || true
  "${SUDO[@]}" apt-get install -y -q --no-install-recommends postgresql >/dev/null || true
fi
if have_pg; then exit 0; fi
msg="[postgres] could not install PostgreSQL (apt-get install -y postgresql as root)"
if [ "${MEMOS_REQUIRE_POSTGRES:-0}" = "1" ]; then echo "$msg" >&2; exit 1; fi
echo "$msg; the PostgreSQL tests will be skipped" >&2
