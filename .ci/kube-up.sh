#!/usr/bin/env bash
# Start a throwaway etcd + kube-apiserver (v1.20, built by kube-apiserver.sh)
# on 127.0.0.1 for integration tests, and print the kubeconfig path as the
# only line on stdout. Progress goes to stderr.
#
#   KUBECONFIG=$(bash .ci/kube-up.sh DIR)     # start (returns once /readyz is 200)
#   KUBECONFIG=$(bash .ci/kube-up.sh --node DIR)  # a whole node instead: kube-node.sh up
#   bash .ci/kube-up.sh --stop DIR            # stop what DIR/env records (either kind)
#
# DIR receives:
#   kubeconfig            server https://127.0.0.1:$KUBE_PORT, admin token
#                         (user admin, group system:masters)
#   env                   KUBE_PORT ETCD_PORT ETCD_PID APISERVER_PID KUBE_TOKEN
#                         KUBECONFIG (sourceable KEY=value lines)
#   token.csv sa.key sa.pub certs/ etcd/   generated state
#   etcd.log kube-apiserver.log
# Both daemons run in their own session (setsid), detached from the caller's
# stdio, so `$(kube-up.sh DIR)` returns and a Ctrl-C does not reach them.
# Running it again on a DIR whose servers are still up just prints the path.
#
# Environment: KUBE_APISERVER (binary; default: output of kube-apiserver.sh),
# ETCD (default: etcd on PATH), KUBE_UP_TIMEOUT (seconds, default 120),
# KUBE_ADVERTISE_ADDRESS (default: the apiserver picks a host interface).
set -euo pipefail

script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"

log() { echo "kube-up: $*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { echo "usage: $0 DIR | $0 --node DIR | $0 --stop DIR" >&2; exit 2; }

# alive PID: process exists and is not a zombie
alive() {
    local st
    [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null || return 1
    st="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
    [[ $st != Z ]]
}

# ours PID DIR: PID is alive and its command line mentions DIR (guards against
# a recycled pid)
ours() {
    alive "$1" && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$2"
}

# gone PID TENTHS: waits up to TENTHS tenths of a second for PID to exit,
# and reaps it; fails if it is still running.
gone() {
    local i
    for ((i = 0; i < $2; i++)); do
        alive "$1" || { wait "$1" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    return 1
}

stop_pid() { # stop_pid NAME PID DIR
    local name="$1" pid="$2" dir="$3"
    if ! ours "$pid" "$dir"; then
        log "$name (pid ${pid:-?}) not running"
        return 0
    fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    gone "$pid" 300 && return 0
    log "$name (pid $pid) still running after 30s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    gone "$pid" 100 && return 0
    die "$name (pid $pid) did not exit"
}

read_env() { # read_env DIR -> sets ETCD_PID APISERVER_PID KUBE_PORT
    ETCD_PID="" APISERVER_PID="" KUBE_PORT=""
    [[ -f $1/env ]] || return 1
    ETCD_PID="$(sed -n 's/^ETCD_PID=//p' "$1/env")"
    APISERVER_PID="$(sed -n 's/^APISERVER_PID=//p' "$1/env")"
    KUBE_PORT="$(sed -n 's/^KUBE_PORT=//p' "$1/env")"
    KUBE_TOKEN="$(sed -n 's/^KUBE_TOKEN=//p' "$1/env")"
}

stop_dir() {
    local dir="$1"
    read_env "$dir" || { log "no $dir/env, nothing to stop"; return 0; }
    stop_pid kube-apiserver "$APISERVER_PID" "$dir"
    stop_pid etcd "$ETCD_PID" "$dir"
}

[[ $# -ge 1 ]] || usage
if [[ $1 == --node ]]; then
    [[ $# -eq 2 ]] || usage
    exec bash "$script_dir/kube-node.sh" up "$2"
fi
if [[ $1 == --stop ]]; then
    [[ $# -eq 2 ]] || usage
    [[ -d $2 ]] || die "no such directory: $2"
    if grep -qs '^NODE_NETNS=' "$2/env"; then
        exec bash "$script_dir/kube-node.sh" down "$2"
    fi
    stop_dir "$(cd -- "$2" && pwd)"
    exit 0
fi
[[ $# -eq 1 && $1 != -* ]] || usage

mkdir -p "$1"
dir="$(cd -- "$1" && pwd)"
timeout="${KUBE_UP_TIMEOUT:-120}"

ready() { # ready PORT TOKEN
    [[ "$(curl -ksS -o /dev/null -w '%{http_code}' --max-time 2 \
        -H "Authorization: Bearer $2" "https://127.0.0.1:$1/readyz" 2>/dev/null)" == 200 ]]
}

# Already up?
if read_env "$dir" && ours "$APISERVER_PID" "$dir" && ours "$ETCD_PID" "$dir" &&
    [[ -f $dir/kubeconfig ]] && ready "$KUBE_PORT" "$KUBE_TOKEN"; then
    log "already running on port $KUBE_PORT"
    echo "$dir/kubeconfig"
    exit 0
fi
# Leftovers from an earlier run: stop them, start from a clean state.
stop_dir "$dir" 2>/dev/null || true
rm -rf "$dir/etcd" "$dir/certs" "$dir/env" "$dir/kubeconfig"

apiserver="${KUBE_APISERVER:-$(bash "$script_dir/kube-apiserver.sh")}"
etcd="${ETCD:-$(command -v etcd || true)}"
[[ -x $apiserver ]] || die "kube-apiserver not found: $apiserver"
[[ -n $etcd && -x $etcd ]] || die "etcd not found (apt-get install etcd-server)"
command -v openssl >/dev/null || die "openssl not found"
command -v curl >/dev/null || die "curl not found"

# --- free loopback ports ------------------------------------------------------
picked=()
port_free() {
    local p="$1" q
    for q in "${picked[@]}"; do [[ $q == "$p" ]] && return 1; done
    if command -v ss >/dev/null; then
        [[ -z "$(ss -Htan "( sport = :$p )" 2>/dev/null)" ]]
    else
        ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null
    fi
}
pick_port() {
    local p i
    for ((i = 0; i < 200; i++)); do
        p=$((20000 + RANDOM % 30000))
        if port_free "$p"; then picked+=("$p"); echo "$p"; return 0; fi
    done
    die "no free port found"
}
etcd_port="$(pick_port)"; picked+=("$etcd_port")
peer_port="$(pick_port)"; picked+=("$peer_port")
kube_port="$(pick_port)"; picked+=("$kube_port")

# --- credentials ----------------------------------------------------------------
mkdir -p "$dir/certs"
openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
token="$(openssl rand -hex 24)"
echo "$token,admin,admin,\"system:masters\"" >"$dir/token.csv"
chmod 600 "$dir/sa.key" "$dir/token.csv"

# --- start ------------------------------------------------------------------------
etcd_pid="" apiserver_pid=""
cleanup_on_fail() {
    local rc=$?
    [[ $rc -eq 0 ]] && return 0
    [[ -n $apiserver_pid ]] && { kill -TERM "$apiserver_pid" 2>/dev/null || true; }
    [[ -n $etcd_pid ]] && { kill -TERM "$etcd_pid" 2>/dev/null || true; }
    wait 2>/dev/null || true
    log "failed; logs in $dir"
}
trap cleanup_on_fail EXIT

# `( exec setsid cmd ) &`: the subshell is not a process-group leader, so
# setsid does not fork and $! is the daemon's own pid. stdio is detached so a
# caller capturing our stdout is not kept waiting by the daemons.
log "starting etcd on 127.0.0.1:$etcd_port"
(exec setsid "$etcd" \
    --name corral \
    --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "corral=http://127.0.0.1:$peer_port" \
    --initial-cluster-state new \
    </dev/null >"$dir/etcd.log" 2>&1) &
etcd_pid=$!

start=$SECONDS
until [[ "$(curl -sS --max-time 2 "http://127.0.0.1:$etcd_port/health" 2>/dev/null)" == *'"health":"true"'* ]]; do
    alive "$etcd_pid" || { tail -n 30 "$dir/etcd.log" >&2; die "etcd exited"; }
    ((SECONDS - start < timeout)) || { tail -n 30 "$dir/etcd.log" >&2; die "etcd not healthy after ${timeout}s"; }
    sleep 0.2
done
log "etcd healthy after $((SECONDS - start))s (pid $etcd_pid)"

advertise=()
[[ -n ${KUBE_ADVERTISE_ADDRESS:-} ]] && advertise=(--advertise-address="$KUBE_ADVERTISE_ADDRESS")

log "starting kube-apiserver on 127.0.0.1:$kube_port"
(exec setsid "$apiserver" \
    --bind-address=127.0.0.1 \
    --secure-port="$kube_port" \
    --insecure-port=0 \
    --cert-dir="$dir/certs" \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --token-auth-file="$dir/token.csv" \
    --authorization-mode=RBAC \
    --service-account-key-file="$dir/sa.pub" \
    --service-account-signing-key-file="$dir/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc \
    --service-cluster-ip-range=10.96.0.0/16 \
    --disable-admission-plugins=ServiceAccount \
    --profiling=false \
    "${advertise[@]}" \
    </dev/null >"$dir/kube-apiserver.log" 2>&1) &
apiserver_pid=$!

start=$SECONDS
until ready "$kube_port" "$token"; do
    alive "$apiserver_pid" || { tail -n 30 "$dir/kube-apiserver.log" >&2; die "kube-apiserver exited"; }
    ((SECONDS - start < timeout)) || { tail -n 30 "$dir/kube-apiserver.log" >&2; die "kube-apiserver not ready after ${timeout}s"; }
    sleep 0.2
done
log "kube-apiserver ready after $((SECONDS - start))s (pid $apiserver_pid)"

# Verify TLS against the self-signed cert the server wrote; fall back to
# skipping verification if it does not cover 127.0.0.1.
tls="    insecure-skip-tls-verify: true"
if [[ -f $dir/certs/apiserver.crt ]] &&
    curl -sS -o /dev/null --max-time 5 --cacert "$dir/certs/apiserver.crt" \
        -H "Authorization: Bearer $token" "https://127.0.0.1:$kube_port/readyz" 2>/dev/null; then
    tls="    certificate-authority: $dir/certs/apiserver.crt"
else
    log "generated cert does not verify for 127.0.0.1; kubeconfig skips TLS verification"
fi

cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: corral
  cluster:
    server: https://127.0.0.1:$kube_port
$tls
users:
- name: admin
  user:
    token: $token
contexts:
- name: corral
  context:
    cluster: corral
    user: admin
    namespace: default
current-context: corral
EOF
chmod 600 "$dir/kubeconfig"

cat >"$dir/env" <<EOF
KUBE_PORT=$kube_port
ETCD_PORT=$etcd_port
ETCD_PID=$etcd_pid
APISERVER_PID=$apiserver_pid
KUBE_TOKEN=$token
KUBECONFIG=$dir/kubeconfig
EOF

trap - EXIT
echo "$dir/kubeconfig"
