#!/usr/bin/env bash
# Each distribution on its own: a fresh virtualenv with only cdc-core, the package (and what it
# declares), and the test tools. Proves no package leans on a dependency only a sibling brings,
# that its entry point resolves, and that its server-free tests pass there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
ROOT=${CDC_ISOLATION_DIR:-$HOME/.cache/cdc-isolation}
TOOLS=(pytest pytest-asyncio pytest-timeout hypothesis)

check() {  # name component-kind component-name install-args...
  local name=$1 kind=$2 component=$3; shift 3
  local venv="$ROOT/$name" started=$SECONDS
  "$PYTHON" -m venv --clear "$venv"
  "$venv/bin/pip" install --quiet "$@" "${TOOLS[@]}"
  if ! "$venv/bin/cdc" plugins | awk -v k="$kind" -v n="$component" '$1 == k && $2 == n { found = 1 } END { exit !found }'; then
    echo "isolation: $name: 'cdc plugins' does not list the $kind $component" >&2
    exit 1
  fi
  if [ -d "packages/$name/tests" ]; then
    "$venv/bin/pytest" -p no:cacheprovider -q -m "not integration" "packages/$name/tests" -W "ignore::pytest.PytestConfigWarning"
  fi
  echo "isolation: $name ok ($((SECONDS - started)) s)"
}

check cdc-core sink jsonl packages/cdc-core
check cdc-masking transform masking packages/cdc-core packages/cdc-masking
check cdc-sink-postgres sink postgres packages/cdc-core packages/cdc-sink-postgres
check cdc-sink-timescale sink timescale packages/cdc-core packages/cdc-sink-postgres packages/cdc-sink-timescale
check cdc-sink-clickhouse sink clickhouse packages/cdc-core "packages/cdc-sink-clickhouse[embedded]"
