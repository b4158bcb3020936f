#!/usr/bin/env bash
# The real-SGLang test tier: sglang 0.5.23 with its dependencies, installed once into a
# cached virtual environment outside the clone (11 GB: every clone and CI run reuses it),
# this clone installed into it (editable, no dependencies), then tests/sglang_real.
#
#   bash scripts/real_sglang.sh [pytest arguments]     build the environment if needed, run the tier
#   bash scripts/real_sglang.sh --python               build it if needed, print its python
#
# PREFILL_STARTUP_SGLANG_ENV overrides where the environment lives.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=0.5.23
env_dir=${PREFILL_STARTUP_SGLANG_ENV:-${XDG_CACHE_HOME:-$HOME/.cache}/prefill-startup/sglang-$version}
mkdir -p "$(dirname "$env_dir")"
exec 9>"$env_dir.lock"
flock 9  # one build, and one clone's editable install at a time

if [ ! -f "$env_dir/.complete" ]; then
  # A half-built environment (an interrupted run) is rebuilt from scratch: a venv cannot be moved.
  rm -rf "$env_dir"
  echo "building $env_dir (sglang==$version and its dependencies: about 5 minutes, 11 GB, once)" >&2
  start=$SECONDS
  python3 -m venv "$env_dir"
  "$env_dir/bin/pip" install -q --no-cache-dir --disable-pip-version-check "sglang==$version" \
    "pytest>=7.4" "hypothesis>=6.90" 2>&1 | grep -v "^WARNING: Location" || true
  "$env_dir/bin/python" -c "import sglang.version as v; assert v.__version__ == '$version', v.__version__"
  date -u +%FT%TZ > "$env_dir/.complete"
  echo "built in $((SECONDS - start)) s: $(du -sh "$env_dir" | cut -f1)" >&2
fi
"$env_dir/bin/pip" install -q --disable-pip-version-check -e "$root" 2>&1 | grep -v "^WARNING: Location" || true

if [ "${1:-}" = "--python" ]; then
  echo "$env_dir/bin/python"
  exit 0
fi
cd "$root"
exec "$env_dir/bin/python" -m pytest -q -p no:cacheprovider tests/sglang_real "$@"
