#!/usr/bin/env bash
# Create (idempotently) the Python venv used by corral's integration tests and
# benchmarks, and print its path as the only line on stdout.
#
#   VENV=$(bash .ci/python-env.sh)
#
# Location: ${CORRAL_VENV:-$HOME/.cache/corral/venv}. The venv is rebuilt from
# scratch whenever the sha256 of tests/requirements.txt (or the python3 used)
# differs from the stamp stored inside it. Progress goes to stderr.
set -euo pipefail

script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd -- "$script_dir/.." && pwd)"
req="$repo_root/tests/requirements.txt"
venv="${CORRAL_VENV:-$HOME/.cache/corral/venv}"
stamp="$venv/.corral-requirements.sha256"
python="${PYTHON:-python3}"

log() { echo "python-env: $*" >&2; }

[[ -f "$req" ]] || { log "missing $req"; exit 1; }
command -v "$python" >/dev/null || { log "$python not found"; exit 1; }

want="$( { sha256sum "$req" | cut -d' ' -f1; "$python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    log "venv up to date: $venv"
else
    log "building venv at $venv"
    start=$SECONDS
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r "$req" >&2
    echo "$want" >"$stamp"
    log "venv ready in $((SECONDS - start))s"
fi

echo "$venv"
