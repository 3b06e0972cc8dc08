#!/usr/bin/env bash
# Compile bench/java/CommitLogReadBench.java against the cassandra-all jars that
# scripts/services.sh downloaded, and run it over one segment directory written by
# `bench_commitlog_decode.py generate` (it reads <dir>/tables.tsv: id, keyspace, CREATE TABLE).
#
#   bash bench/java/run.sh ~/.cache/cdc-bench/wide [repeats]
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE_DIR=${CDC_SERVICES_CACHE:-$HOME/.cache/cdc-services}
VERSION=${CDC_CASSANDRA_VERSION:-5.0.9}
LIB=$CACHE_DIR/cassandra/$VERSION/lib
[[ -f $LIB/cassandra-all-$VERSION.jar ]] || { echo "no $LIB/cassandra-all-$VERSION.jar: run scripts/services.sh up cassandra" >&2; exit 1; }
DATA=${1:?segment directory}
REPEATS=${2:-5}
# the configuration of the test node (read only; DatabaseDescriptor.toolInitialization)
CONFIG=${CDC_BENCH_CASSANDRA_YAML:-${CDC_SERVICES_STATE:-$HOME/.local/state/cdc-services}/cassandra/cassandra.yaml}
OUT=${CDC_BENCH_JAVA_BUILD:-$HOME/.cache/cdc-bench/java-classes}
mkdir -p "$OUT"
if [[ ! -f $OUT/CommitLogReadBench.class || $HERE/CommitLogReadBench.java -nt $OUT/CommitLogReadBench.class ]]; then
  javac -nowarn -cp "$LIB/*" -d "$OUT" "$HERE/CommitLogReadBench.java"
fi
# one core, like the Python measurement; a small heap; logging quiet
exec taskset -c "${CDC_BENCH_CPU:-0}" java -Xms512m -Xmx1g -XX:ActiveProcessorCount=1 \
  -Dlogback.configurationFile="$HERE/logback-quiet.xml" -Dcassandra.config="file://$CONFIG" \
  --add-exports java.base/jdk.internal.misc=ALL-UNNAMED --add-exports java.base/jdk.internal.ref=ALL-UNNAMED \
  --add-opens java.base/java.nio=ALL-UNNAMED --add-opens java.base/sun.nio.ch=ALL-UNNAMED \
  --add-opens java.base/java.lang=ALL-UNNAMED --add-opens java.base/java.io=ALL-UNNAMED \
  -cp "$LIB/*:$OUT" CommitLogReadBench "$DATA" "$DATA/tables.tsv" "$REPEATS"
