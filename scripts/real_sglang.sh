#!/usr/bin/env bash
# The real-SGLang test tier: sglang 0.5.23 and the part of its dependencies its real modules
# import on a CPU (scripts/real_sglang.requirements.txt: 5.7 GB, about 100 s to build), in a
# cached virtual environment outside the clone, so that every clone and CI run reuses it; this
# clone installed into it (editable); then tests/sglang_real.
#
#   bash scripts/real_sglang.sh [pytest arguments]     build the environment if needed, run the tier
#   bash scripts/real_sglang.sh --python               build it if needed, print its python
#
# The environment's name carries the requirements' hash: a changed list builds a new one.
# PREFILL_STARTUP_SGLANG_ENV overrides where it lives.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
requirements="$root/scripts/real_sglang.requirements.txt"
key=$(sha256sum "$requirements" | cut -c1-12)
home=${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}  # CI may run without HOME
cache=${XDG_CACHE_HOME:-$home/.cache}/prefill-startup
env_dir=${PREFILL_STARTUP_SGLANG_ENV:-$cache/sglang-0.5.23-$key}
mkdir -p "$(dirname "$env_dir")"
exec 9>"$env_dir.lock"
flock 9  # one build, and one clone's editable install at a time

quiet() { grep -v "^WARNING: Location" || true; }  # this machine's pip names absent local indexes
if [ ! -f "$env_dir/.complete" ]; then
  # A half-built environment (an interrupted run) is rebuilt from scratch: a venv cannot be moved.
  rm -rf "$env_dir"
  echo "building $env_dir from $(basename "$requirements") (about 100 s, 5.7 GB, once)" >&2
  start=$SECONDS
  python3 -m venv "$env_dir"
  "$env_dir/bin/pip" install -q --no-cache-dir --disable-pip-version-check --no-deps -r "$requirements" 2>&1 | quiet
  "$env_dir/bin/pip" install -q --no-cache-dir --disable-pip-version-check "pytest>=7.4" "hypothesis>=6.90" 2>&1 | quiet
  "$env_dir/bin/python" -c "import sglang.version as v; assert v.__version__ == '0.5.23', v.__version__"
  date -u +%FT%TZ > "$env_dir/.complete"
  echo "built in $((SECONDS - start)) s: $(du -sh "$env_dir" | cut -f1)" >&2
fi
# This clone, and its own dependencies (transitions, structlog): seconds when already there.
"$env_dir/bin/pip" install -q --disable-pip-version-check -e "$root" 2>&1 | quiet

if [ "${1:-}" = "--python" ]; then
  echo "$env_dir/bin/python"
  exit 0
fi
cd "$root"
exec "$env_dir/bin/python" -m pytest -q -p no:cacheprovider tests/sglang_real "$@"
