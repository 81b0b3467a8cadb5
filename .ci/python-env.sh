#!/usr/bin/env bash
# Create (idempotently) the Python venv used by corral's integration tests
# (and, with bench/requirements.txt added, by the benchmark), and print its
# path as the only line on stdout.
#
#   VENV=$(bash .ci/python-env.sh)
#   VENV=$(CORRAL_VENV=~/.cache/corral/bench-venv bash .ci/python-env.sh bench/requirements.txt)
#
# Installs tests/requirements.txt plus any requirement files named as
# arguments (paths from the repository root, or absolute). Location:
# ${CORRAL_VENV:-$HOME/.cache/corral/venv}. The venv is rebuilt from scratch
# whenever the sha256 of those files (or the python3 used) differs from the
# stamp stored inside it. Progress goes to stderr.
set -euo pipefail

script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd -- "$script_dir/.." && pwd)"
reqs=("$repo_root/tests/requirements.txt")
for extra in "$@"; do
    [[ $extra == /* ]] || extra="$repo_root/$extra"
    reqs+=("$extra")
done
venv="${CORRAL_VENV:-$HOME/.cache/corral/venv}"
stamp="$venv/.corral-requirements.sha256"
python="${PYTHON:-python3}"

log() { echo "python-env: $*" >&2; }

for req in "${reqs[@]}"; do
    [[ -f "$req" ]] || { log "missing $req"; exit 1; }
done
command -v "$python" >/dev/null || { log "$python not found"; exit 1; }

want="$( { sha256sum "${reqs[@]}" | cut -d' ' -f1; "$python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    log "venv up to date: $venv"
else
    log "building venv at $venv"
    start=$SECONDS
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "${reqs[@]/#/--requirement=}" >&2
    echo "$want" >"$stamp"
    log "venv ready in $((SECONDS - start))s"
fi

echo "$venv"
