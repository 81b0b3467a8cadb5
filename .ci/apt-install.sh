#!/usr/bin/env bash
# Installs the Debian packages named that are not installed yet, under one
# machine-wide lock, so that scripts run side by side (two node tests
# bringing a node up at once, say) never race for dpkg's own lock: the
# second waits for the first and then finds nothing left to install.
# `.ci/test` calls it once with every package the tests need, before any
# test starts; the scripts the tests run (kube-node.sh, node-images.sh)
# call it too, for use by hand, and find everything there.
#
#   bash .ci/apt-install.sh PACKAGE...
#
# Progress goes to stderr. Needs root (or sudo).
set -euo pipefail

[[ $# -ge 1 ]] || { echo "usage: $0 PACKAGE..." >&2; exit 2; }
lock=/var/lock/corral-apt.lock

log() { echo "apt-install: $*" >&2; }
as_root() {
    if [[ $EUID -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else log "error: need root to run: $*"; exit 1
    fi
}
installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}
missing() {
    local p
    for p in "$@"; do installed "$p" || echo "$p"; done
}

# Nothing to do: no lock taken, nothing printed.
[[ -n $(missing "$@") ]] || exit 0

exec {fd}>>"$lock"
flock "$fd"
# Another holder of the lock may have installed them meanwhile.
mapfile -t need < <(missing "$@")
[[ ${#need[@]} -gt 0 ]] || exit 0
log "installing ${need[*]}"
as_root apt-get update -qq >&2
as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
