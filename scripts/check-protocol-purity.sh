#!/usr/bin/env bash
# protocol/ must stay pure: no tokio, libp2p or RocksDB anywhere in its dependency tree.
set -euo pipefail
cd "$(dirname "$0")/.."
bad=$(cargo tree --locked -e normal -p hestia-protocol --prefix none \
  | grep -oE '^(tokio|libp2p[a-z0-9-]*|rocksdb|librocksdb-sys) v' | sort -u || true)
if [ -n "$bad" ]; then
  echo "protocol/ pulls in: $bad" >&2
  exit 1
fi
echo "protocol/ is pure: no tokio, libp2p or rocksdb in its tree"
