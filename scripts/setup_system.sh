#!/usr/bin/env bash
# Install the Debian packages some tests need, only when they are missing. Idempotent and quiet when done.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v pg_ctlcluster >/dev/null 2>&1 || [ -x /usr/lib/postgresql/*/bin/initdb ] 2>/dev/null || need+=(postgresql)
if ((${#need[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup-system: missing ${need[*]}; install them with apt-get (needs root). Tests that need them will skip." >&2
    exit 0
  fi
  echo "setup-system: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
