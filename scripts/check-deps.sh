#!/usr/bin/env bash
# Fails if the dependency graph holds two versions of a crate whose types must
# be shared (two arrows make RecordBatches that do not interoperate).
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
for c in arrow-array arrow-schema parquet datafusion object_store; do
  n=$(cargo tree --locked -e normal -i "$c" --prefix none 2>/dev/null | grep -E "^$c v" | sort -u | wc -l)
  if [ "$n" -ne 1 ]; then
    echo "error: $n versions of $c in the dependency graph (want exactly 1)"; status=1
  else
    echo "ok: one version of $c"
  fi
done
exit $status
