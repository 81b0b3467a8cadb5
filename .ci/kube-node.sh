#!/usr/bin/env bash
# A real single-node Kubernetes cluster (v1.20, every component built from
# Debian's kubernetes source by kube-build.sh; containerd, runc, the CNI
# plugins and iptables from Debian) for the end-to-end tests, sealed in a
# network namespace of its own.
#
#   bash .ci/kube-node.sh up DIR       # start; prints DIR/kubeconfig (the host's view)
#   bash .ci/kube-node.sh down DIR     # stop all DIR/env records and clean up
#   bash .ci/kube-node.sh run DIR      # up, print "ready DIR/kubeconfig", then
#                                      # down once stdin closes (or on TERM/INT):
#                                      # what tests/support/node.rs drives
#   bash .ci/kube-node.sh import DIR REPO ARCHIVE   # ctr images import, named REPO:TAG
#   bash .ci/kube-node.sh check DIR    # the no-route-off-the-machine assertion alone
# (`bash .ci/kube-up.sh --node DIR` is `up`, and `kube-up.sh --stop DIR` stops
# either kind of cluster.)
#
# The network (why a namespace of its own): every part of the node runs in
# the network namespace `corral-node-<id>`, made here with `ip netns add`:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd
# (with the CNI bridge `cni0` it sets up, 10.88.0.0/16) and its pods,
# kubelet, kube-proxy (iptables mode) and, in the tests, Prometheus and the
# load client. That namespace has no interface but lo, cni0 and the pods'
# veths: no default route, no link to the host's network at all, so nothing
# any part sends (a pod's DNS lookup, the API server dialling a kubelet, a
# Service's DNAT) can leave the machine, and the host's iptables, routes and
# interfaces are not touched. `check` asserts it (and up runs it): no route
# but on lo/cni0, `ip route get` of an outside address unreachable, and the
# same inside every pod's namespace. The node's address (10.87.0.1, what the
# `kubernetes` Service's endpoint points at) is on the namespace's lo; pods
# reach the API server through the Service VIP 10.96.0.1 -> kube-proxy DNAT ->
# 10.87.0.1. The one way in from the host is a Unix-socket bridge (socat in
# the namespace listening on DIR/apiserver.sock, socat on the host's
# 127.0.0.1:PORT connecting to it), so the API server answers on the host's
# 127.0.0.1:PORT and on the namespace's 127.0.0.1:PORT alike and one
# kubeconfig serves both.
#
# NodePorts are reached as real clients reach them: from another host, at
# the node's address. That host is the namespace `corral-client-<id>`
# (10.86.0.2), whose one link is a veth to the node's namespace (client0,
# 10.86.0.1) and whose one route leads to the node's address; tests run
# their clients there (setns, `nsenter --net=/run/netns/NAME`). Not from
# the node's own namespace: a connection made there is confirmed in
# conntrack on its way out, before kube-proxy's filter rules see it come in,
# so one made while the Service still has no endpoints (REJECT) leaves an
# untranslated entry behind, and a client that reuses that source port (a
# tight connect loop does) keeps meeting it, refused, long after the DNAT
# is in place. A packet from another host is confirmed only once it has
# passed the filter rules: a refused SYN leaves nothing behind.
#
# Mounts and the host's files: containerd and kubelet run in a private mount
# namespace (held by an anchor process, `unshare --mount --propagation
# private`), in which DIR/ns/* is bind-mounted over /var/log/pods,
# /var/log/containers, /run/containerd and /run/netns (paths kubelet 1.20 and
# containerd hard-code: the pods' logs, shim sockets, the pods' network
# namespace files) and the six kernel sysctls kubelet 1.20 insists on setting
# (kernel.panic, kernel.panic_on_oops, vm.overcommit_memory...: global, not
# per namespace) are shadowed by files holding the values it wants, so it
# finds them "set" and the shared machine's kernel settings stay as they
# are. Every mount the node makes (volumes, container root filesystems, the
# pods' network namespace files) lives in that namespace and vanishes with
# its last process. Every process of the node is in the cgroup
# /corral-node-<id> of each hierarchy (pods under its kubepods), which is
# how down finds and ends them all, and then removes the cgroups.
#
# DIR receives: env (sourceable KEY=value: NODE_NETNS NODE_CGROUP KUBE_PORT
# NODE_IP *_PID ...), kubeconfig, pki/, tokens.csv, *.kubeconfig, *.yaml,
# containerd/, kubelet/, cni/, etcd/, ns/ (logs/pods: the pods' logs), and
# one log per part: etcd.log kube-apiserver.log kube-controller-manager.log
# kube-scheduler.log containerd.log kubelet.log kube-proxy.log socat-*.log.
# up reports how long each part took to be ready; when a part fails (exits,
# or is not ready in time) it prints that part's log tail and exits 1.
#
# Environment: KUBE_NODE_BIN (directory with kube-apiserver kubelet
# kube-proxy kube-controller-manager kube-scheduler pause; default: built by
# kube-build.sh), KUBE_NODE_TIMEOUT (seconds a part may take, default 120),
# KUBE_NODE_RUNC (the OCI runtime binary, default Debian's runc).
# Needs root.
set -euo pipefail

script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
components=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy pause)
NODE_IP=10.87.0.1
# The client host: a namespace of its own on a veth to the node's, as a
# machine on the node's network would be (see "NodePorts" above).
CLIENT_IP=10.86.0.2
CLIENT_GATEWAY=10.86.0.1
POD_CIDR=10.88.0.0/16
SERVICE_CIDR=10.96.0.0/16
SERVICE_IP=10.96.0.1
NODE_NAME=corral-node
timeout="${KUBE_NODE_TIMEOUT:-120}"

log() { echo "kube-node: $*" >&2; }
die() { log "error: $*"; exit 1; }
usage() {
    echo "usage: $0 up|down|run|check DIR | $0 import DIR REPO ARCHIVE" >&2
    exit 2
}

# alive PID: process exists and is not a zombie
alive() {
    local st
    [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null || return 1
    st="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
    [[ $st != Z ]]
}

tail_log() { # tail_log NAME: the last lines of DIR/NAME.log, on stderr
    local f="$dir/$1.log"
    if [[ -s $f ]]; then
        log "--- last lines of $f ---"
        tail -n "${2:-40}" "$f" >&2
        log "--- end of $f ---"
    else
        log "($f is empty or missing)"
    fi
}

# --- cgroups (v1 hierarchies, and the hybrid cgroup2 one) ---------------------
hierarchies() {
    local d
    for d in /sys/fs/cgroup/*/; do
        [[ -f $d/cgroup.procs ]] && echo "${d%/}"
    done
}

cg_create() { # cg_create REL: the cgroup REL in every hierarchy
    local h
    while read -r h; do
        mkdir -p "$h/$1"
        if [[ -f $h/cpuset.cpus ]]; then
            # a cpuset cgroup takes no process before it has cpus and mems
            local p="$h" part
            for part in ${1//\// }; do
                [[ -s $p/$part/cpuset.cpus ]] || cat "$p/cpuset.cpus" >"$p/$part/cpuset.cpus"
                [[ -s $p/$part/cpuset.mems ]] || cat "$p/cpuset.mems" >"$p/$part/cpuset.mems"
                p="$p/$part"
            done
        fi
    done < <(hierarchies)
}

cg_join() { # cg_join REL PID
    local h
    while read -r h; do
        echo "$2" >"$h/$1/cgroup.procs"
    done < <(hierarchies)
}

cg_pids() { # cg_pids REL: every pid in REL's subtree (of the pids hierarchy, or any)
    local h
    h="$(hierarchies | grep -m1 '/pids$' || hierarchies | head -n1)"
    [[ -d $h/$1 ]] || return 0
    find "$h/$1" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -un
}

cg_remove() { # cg_remove REL: rmdir the subtree, deepest first, in every hierarchy
    local h i left
    for ((i = 0; i < 50; i++)); do
        left=0
        while read -r h; do
            [[ -d $h/$1 ]] || continue
            find "$h/$1" -depth -type d -exec rmdir {} + 2>/dev/null || left=1
            [[ -d $h/$1 ]] && left=1
        done < <(hierarchies)
        [[ $left -eq 0 ]] && return 0
        sleep 0.2
    done
    log "warning: cgroup $1 not fully removed"
}

# --- state ----------------------------------------------------------------------
read_env() {
    [[ -f $dir/env ]] || return 1
    # shellcheck disable=SC1091
    source "$dir/env"
}

record() { # record KEY VALUE: append to DIR/env
    echo "$1=$2" >>"$dir/env"
    printf -v "$1" '%s' "$2"
}

# --- down -----------------------------------------------------------------------
stop_pid() { # stop_pid NAME PID [GRACE_SECONDS]: TERM, then KILL, its whole session
    local name="$1" pid="${2:-}" grace="${3:-15}" i
    alive "$pid" || return 0
    log "stopping $name (pid $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
        alive "$pid" || return 0
        sleep 0.1
    done
    log "$name (pid $pid) still running after ${grace}s: SIGKILL"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
}

down() {
    read_env || { log "no $dir/env: nothing to stop"; return 0; }
    local start=$SECONDS pid i
    # kubelet first, so nothing restarts what is being stopped; then every
    # pod and shim (all in the node's cgroup), then the rest.
    stop_pid kubelet "${KUBELET_PID:-}"
    stop_pid kube-proxy "${PROXY_PID:-}"
    stop_pid containerd "${CONTAINERD_PID:-}"
    if [[ -n ${NODE_CGROUP:-} ]]; then
        for pid in $(cg_pids "$NODE_CGROUP/kubepods") $(cg_pids "$NODE_CGROUP/runtime"); do
            kill -KILL "$pid" 2>/dev/null || true
        done
    fi
    stop_pid kube-scheduler "${SCHEDULER_PID:-}"
    stop_pid kube-controller-manager "${KCM_PID:-}"
    stop_pid socat-host "${SOCAT_HOST_PID:-}" 2
    stop_pid socat-netns "${SOCAT_NETNS_PID:-}" 2
    stop_pid kube-apiserver "${APISERVER_PID:-}"
    stop_pid etcd "${ETCD_PID:-}"
    stop_pid mount-namespace "${ANCHOR_PID:-}" 2
    if [[ -n ${NODE_CGROUP:-} ]]; then
        # Whatever is left of the node (all of it started by up) is ended.
        for ((i = 0; i < 50; i++)); do
            pids="$(cg_pids "$NODE_CGROUP")"
            [[ -z $pids ]] && break
            # shellcheck disable=SC2086
            kill -KILL $pids 2>/dev/null || true
            sleep 0.1
        done
        cg_remove "$NODE_CGROUP"
    fi
    local netns
    for netns in "${NODE_NETNS:-}" "${CLIENT_NETNS:-}"; do
        if [[ -n $netns ]] && grep -qw "$netns" <<<"$(ip netns list)"; then
            log "deleting network namespace $netns"
            ip netns del "$netns" || log "warning: ip netns del $netns failed"
        fi
    done
    # The bulky state goes (the images, containers' snapshots, etcd's data);
    # the logs stay for a look afterwards. Only once nothing of the node
    # runs: its private mount namespace, and every mount in it, is gone then.
    if ! alive "${ANCHOR_PID:-}" && [[ -z "$(cg_pids "${NODE_CGROUP:-none}")" ]]; then
        rm -rf "$dir/containerd" "$dir/images" "$dir/etcd" "$dir/kubelet" "$dir/cni/ipam"
    fi
    rm -f "$dir/env"
    log "down in $((SECONDS - start))s"
}

# --- the no-route-off-the-machine assertion ------------------------------------
# In the node's namespace: no interface but lo, cni0, the pods' veths and
# client0, no route on any other, no default route, outside addresses
# unreachable. In every pod's, and in the client's: the same with lo and
# eth0 (its veth to cni0, or to client0, in the node's namespace).
check_netns() { # check_netns LABEL LINKS_REGEX NSENTER_ARGS...
    local label="$1" allowed="$2"; shift 2
    local routes devs links bad
    routes="$(nsenter "$@" ip -o route show table all 2>&1 && nsenter "$@" ip -o -6 route show table all 2>&1)" ||
        { echo "$label: ip route: $routes"; return 1; }
    if grep -qE '^default ' <<<"$routes"; then
        echo "$label: has a default route:"; echo "$routes"; return 1
    fi
    devs="$(echo "$routes" | grep -oE ' dev [^ ]+' | awk '{print $2}' | sort -u)"
    bad="$(echo "$devs" | grep -vE "^($allowed)\$" | grep -v '^$' || true)"
    if [[ -n $bad ]]; then
        echo "$label: routes on unexpected devices ($bad):"; echo "$routes"; return 1
    fi
    links="$(nsenter "$@" ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//')"
    bad="$(echo "$links" | grep -vE "^($allowed)\$" || true)"
    if [[ -n $bad ]]; then
        echo "$label: unexpected interfaces: $bad"; return 1
    fi
    local a
    for a in 192.0.2.1 8.8.8.8 1.1.1.1; do
        if nsenter "$@" ip route get "$a" >/dev/null 2>&1; then
            echo "$label: $a is routable:"; nsenter "$@" ip route get "$a" 2>&1; return 1
        fi
    done
}

check() {
    read_env || die "no $dir/env"
    local failed=0 pid ns seen=" " out
    out="$(check_netns "node namespace $NODE_NETNS" 'lo|cni0|client0|veth[0-9a-f]+' --net="/run/netns/$NODE_NETNS")" || { log "$out"; failed=1; }
    out="$(check_netns "client namespace $CLIENT_NETNS" 'lo|eth0' --net="/run/netns/$CLIENT_NETNS")" || { log "$out"; failed=1; }
    # every pod: the network namespace of each process in the node's kubepods
    for pid in $(cg_pids "$NODE_CGROUP/kubepods"); do
        ns="$(readlink "/proc/$pid/ns/net" 2>/dev/null)" || continue
        [[ $seen == *" $ns "* ]] && continue
        seen+="$ns "
        out="$(check_netns "pod namespace $ns (pid $pid)" 'lo|eth0' --net="/proc/$pid/ns/net")" || { log "$out"; failed=1; }
    done
    # and the host: the node added no route there
    if grep -qE "^(10\.8[678]\.|10\.96\.)" <<<"$(ip route show table all)"; then
        log "the host has a route into the node's ranges:"; ip route show table all | grep -E "^(10\.8[678]\.|10\.96\.)" >&2
        failed=1
    fi
    [[ $failed -eq 0 ]] || die "the network check failed: a route could lead off the machine"
    log "network check: no route off the machine (node and client namespaces and $(($(wc -w <<<"$seen"))) pod namespaces)"
}

# --- import -----------------------------------------------------------------------
import_image() { # import_image REPO ARCHIVE
    read_env || die "no $dir/env"
    local start=$SECONDS
    nsenter --net="/run/netns/$NODE_NETNS" --mount="/proc/$ANCHOR_PID/ns/mnt" \
        ctr --address "$dir/containerd/containerd.sock" -n k8s.io images import \
        --base-name "$1" "$2" >&2 || { tail_log containerd; die "ctr images import $2 failed"; }
    log "imported $1 from $2 in $((SECONDS - start))s"
}

# --- up ---------------------------------------------------------------------------
timings=()
took() { timings+=("$1 $(( $(date +%s%N) / 1000000 - $2 ))ms"); }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# wait_for NAME PID CHECK...: until CHECK succeeds; the part's log tail if its
# process exits or the time runs out
wait_for() {
    local name="$1" pid="$2" t0
    shift 2
    t0="$(now_ms)"
    until "$@" >/dev/null 2>&1; do
        if ! alive "$pid"; then
            tail_log "$name"
            die "$name exited (pid $pid)"
        fi
        if (( $(now_ms) - t0 > timeout * 1000 )); then
            tail_log "$name"
            die "$name not ready after ${timeout}s"
        fi
        sleep 0.2
    done
    took "$name" "$t0"
    log "$name ready after $(( $(now_ms) - t0 ))ms (pid $pid)"
}

in_node() { nsenter --net="/run/netns/$NODE_NETNS" "$@"; }
in_node_mnt() { nsenter --net="/run/netns/$NODE_NETNS" --mount="/proc/$ANCHOR_PID/ns/mnt" "$@"; }

# start NAME KEY MOUNT_NS(yes|no) CMD...: a daemon in the node's namespace and
# cgroup (daemons, or runtime for containerd), its own session, output in
# DIR/NAME.log; its pid recorded as KEY.
start() {
    local name="$1" key="$2" mnt="$3" cg="$NODE_CGROUP/daemons"
    shift 3
    [[ $name == containerd ]] && cg="$NODE_CGROUP/runtime"
    local enter=(nsenter --net="/run/netns/$NODE_NETNS")
    [[ $mnt == yes ]] && enter+=(--mount="/proc/$ANCHOR_PID/ns/mnt")
    # `( ... exec setsid ...) &`: the subshell is no group leader, so setsid
    # does not fork and $! is the daemon's pid (as kube-up.sh does it).
    (cg_join "$cg" "$BASHPID"; exec setsid "${enter[@]}" -- "$@" </dev/null >"$dir/$name.log" 2>&1) &
    record "$key" "$!"
}

kubeconfig_for() { # kubeconfig_for FILE USER TOKEN
    cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: corral-node
  cluster:
    server: https://127.0.0.1:$KUBE_PORT
    certificate-authority: $dir/pki/ca.crt
users:
- name: $2
  user:
    token: $3
contexts:
- name: corral-node
  context:
    cluster: corral-node
    user: $2
    namespace: default
current-context: corral-node
EOF
    chmod 600 "$1"
}

https_ok() { # https_ok URL [TOKEN]: 2xx over https with the node's CA
    local auth=()
    [[ -n ${2:-} ]] && auth=(-H "Authorization: Bearer $2")
    in_node curl -sSf -o /dev/null --max-time 2 --cacert "$dir/pki/ca.crt" "${auth[@]}" "$1"
}

# Ready, and schedulable: the node lifecycle controller has lifted the
# not-ready taint (each controller acts as its own ServiceAccount,
# --use-service-account-credentials, as kubeadm sets it up).
node_ready() {
    local state
    state="$("$kubectl" --kubeconfig "$dir/kubeconfig" get node "$NODE_NAME" \
        -o jsonpath='{.status.conditions[?(@.type=="Ready")].status} {.spec.taints}' 2>/dev/null)" || return 1
    [[ $state == 'True ' ]]
}

pick_port() { # a port free on the host's loopback (the namespace's is empty)
    local p i
    for ((i = 0; i < 200; i++)); do
        p=$((20000 + RANDOM % 30000))
        [[ -z "$(ss -Htan "( sport = :$p )" 2>/dev/null)" ]] && { echo "$p"; return 0; }
    done
    die "no free port"
}

up() {
    [[ $EUID -eq 0 ]] || die "needs root (network namespace, cgroups, containers)"
    if read_env 2>/dev/null && alive "${KUBELET_PID:-}" && [[ -f $dir/kubeconfig ]]; then
        log "already up ($NODE_NETNS)"
        echo "$dir/kubeconfig"
        return 0
    fi
    down 2>/dev/null || true
    local t_all t0 bin_dir
    t_all="$(now_ms)"

    # --- what it needs (.ci/test installed it all before the tests) ------------
    bash "$script_dir/apt-install.sh" containerd runc containernetworking-plugins \
        iptables socat conntrack umoci etcd-server curl openssl iproute2
    if [[ -n ${KUBE_NODE_BIN:-} ]]; then
        bin_dir="$KUBE_NODE_BIN"
    else
        t0="$(now_ms)"
        bin_dir="$(dirname "$(bash "$script_dir/kube-build.sh" "${components[@]}" | head -n1)")"
        took build "$t0"
    fi
    local c
    for c in "${components[@]}"; do
        [[ -x $bin_dir/$c ]] || die "no $bin_dir/$c (bash .ci/kube-build.sh ${components[*]})"
    done
    kubectl="${KUBECTL:-$(bash "$script_dir/k8s-tools.sh")/kubectl}"

    mkdir -p "$dir"
    # A fresh cluster every time: no state of an earlier one is reused.
    rm -rf "$dir/etcd" "$dir/containerd" "$dir/kubelet" "$dir/cni" "$dir/ns" "$dir/pki" "$dir/images" "$dir"/*.log
    : >"$dir/env"
    local id
    id="$(printf '%s' "$dir" | sha256sum | cut -c1-8)"
    record NODE_DIR "$dir"
    record NODE_NAME "$NODE_NAME"
    record NODE_IP "$NODE_IP"
    record POD_CIDR "$POD_CIDR"
    record SERVICE_CIDR "$SERVICE_CIDR"

    failed_up() {
        local rc=$?
        [[ $rc -eq 0 ]] && return 0
        log "up failed (exit $rc); logs in $dir; stopping what was started"
        down || true
        exit "$rc"
    }
    trap failed_up EXIT

    # --- network namespace ----------------------------------------------------------
    t0="$(now_ms)"
    record NODE_NETNS "corral-node-$id"
    ip netns del "$NODE_NETNS" 2>/dev/null || true
    ip netns add "$NODE_NETNS"
    ip -n "$NODE_NETNS" link set lo up
    ip -n "$NODE_NETNS" addr add "$NODE_IP/32" dev lo
    in_node sysctl -qw net.ipv4.ip_forward=1
    record CLIENT_NETNS "corral-client-$id"
    ip netns del "$CLIENT_NETNS" 2>/dev/null || true
    ip netns add "$CLIENT_NETNS"
    ip -n "$CLIENT_NETNS" link set lo up
    ip -n "$NODE_NETNS" link add client0 type veth peer name eth0 netns "$CLIENT_NETNS"
    ip -n "$NODE_NETNS" addr add "$CLIENT_GATEWAY/24" dev client0
    ip -n "$NODE_NETNS" link set client0 up
    ip -n "$CLIENT_NETNS" addr add "$CLIENT_IP/24" dev eth0
    ip -n "$CLIENT_NETNS" link set eth0 up
    ip -n "$CLIENT_NETNS" route add "$NODE_IP/32" via "$CLIENT_GATEWAY"
    took netns "$t0"

    # --- cgroups ----------------------------------------------------------------------
    record NODE_CGROUP "corral-node-$id"
    cg_remove "$NODE_CGROUP" 2>/dev/null || true
    cg_create "$NODE_CGROUP/daemons"
    cg_create "$NODE_CGROUP/runtime"

    # --- private mount namespace -------------------------------------------------
    t0="$(now_ms)"
    mkdir -p "$dir/ns/var-log-pods" "$dir/ns/var-log-containers" "$dir/ns/run-containerd" \
        "$dir/ns/run-netns" "$dir/ns/sysctl"
    mkdir -p /var/log/pods /var/log/containers /run/containerd /run/netns
    # kubelet's desired values (pkg/kubelet/cm/container_manager_linux.go)
    local shadow="" kv key want
    for kv in vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1 \
        kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000; do
        key="${kv%=*}" want="${kv#*=}"
        if [[ "$(cat "/proc/sys/$key")" != "$want" ]]; then
            echo "$want" >"$dir/ns/sysctl/${key//\//.}"
            shadow+="mount --bind $dir/ns/sysctl/${key//\//.} /proc/sys/$key && "
        fi
    done
    rm -f "$dir/ns/ready"
    (cg_join "$NODE_CGROUP/daemons" "$BASHPID"
     exec setsid unshare --mount --propagation private -- sh -c "
        mount --bind '$dir/ns/var-log-pods' /var/log/pods &&
        mount --bind '$dir/ns/var-log-containers' /var/log/containers &&
        mount --bind '$dir/ns/run-containerd' /run/containerd &&
        mount --bind '$dir/ns/run-netns' /run/netns &&
        $shadow touch '$dir/ns/ready' && exec sleep infinity" </dev/null >"$dir/mount-namespace.log" 2>&1) &
    record ANCHOR_PID "$!"
    wait_for mount-namespace "$ANCHOR_PID" test -f "$dir/ns/ready"

    # --- credentials --------------------------------------------------------------------
    t0="$(now_ms)"
    mkdir -p "$dir/pki"
    (
        cd "$dir/pki"
        openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 7 \
            -subj "/CN=corral-node-ca" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr \
            -subj "/CN=kube-apiserver" 2>/dev/null
        printf '%s\n' \
            "subjectAltName=IP:127.0.0.1,IP:$NODE_IP,IP:$SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" \
            "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
            "extendedKeyUsage=serverAuth" >apiserver.ext
        openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
            -out apiserver.crt -days 7 -extfile apiserver.ext 2>/dev/null
        openssl genrsa -out sa.key 2048 2>/dev/null
        openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
        chmod 600 ./*.key
    )
    record KUBE_PORT "$(pick_port)"
    local admin kcm sched kubelet_t proxy
    admin="$(openssl rand -hex 24)" kcm="$(openssl rand -hex 24)" sched="$(openssl rand -hex 24)"
    kubelet_t="$(openssl rand -hex 24)" proxy="$(openssl rand -hex 24)"
    cat >"$dir/tokens.csv" <<EOF
$admin,admin,admin,"system:masters"
$kcm,system:kube-controller-manager,system:kube-controller-manager
$sched,system:kube-scheduler,system:kube-scheduler
$kubelet_t,system:node:$NODE_NAME,system:node:$NODE_NAME,"system:nodes"
$proxy,system:kube-proxy,system:kube-proxy
EOF
    chmod 600 "$dir/tokens.csv"
    record KUBE_TOKEN "$admin"
    kubeconfig_for "$dir/kubeconfig" admin "$admin"
    kubeconfig_for "$dir/kube-controller-manager.kubeconfig" system:kube-controller-manager "$kcm"
    kubeconfig_for "$dir/kube-scheduler.kubeconfig" system:kube-scheduler "$sched"
    kubeconfig_for "$dir/kubelet.kubeconfig" "system:node:$NODE_NAME" "$kubelet_t"
    kubeconfig_for "$dir/kube-proxy.kubeconfig" system:kube-proxy "$proxy"
    record KUBECONFIG "$dir/kubeconfig"
    took credentials "$t0"

    # --- etcd -------------------------------------------------------------------------------
    start etcd ETCD_PID no etcd --name corral-node --data-dir "$dir/etcd" \
        --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
        --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --initial-cluster corral-node=http://127.0.0.1:2380 --initial-cluster-state new
    wait_for etcd "$ETCD_PID" in_node sh -c 'curl -sS --max-time 2 http://127.0.0.1:2379/health | grep -q "\"health\":\"true\""'

    # --- kube-apiserver ---------------------------------------------------------------------
    # 0.0.0.0 of the node's namespace: its 127.0.0.1 (the host's bridge, the
    # parts) and 10.87.0.1 (the pods, through the Service VIP).
    start kube-apiserver APISERVER_PID no "$bin_dir/kube-apiserver" \
        --bind-address=0.0.0.0 --secure-port="$KUBE_PORT" --insecure-port=0 \
        --advertise-address="$NODE_IP" \
        --etcd-servers=http://127.0.0.1:2379 \
        --tls-cert-file="$dir/pki/apiserver.crt" --tls-private-key-file="$dir/pki/apiserver.key" \
        --client-ca-file="$dir/pki/ca.crt" \
        --token-auth-file="$dir/tokens.csv" \
        --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
        --service-account-key-file="$dir/pki/sa.pub" \
        --service-account-signing-key-file="$dir/pki/sa.key" \
        --service-account-issuer=https://kubernetes.default.svc \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --kubelet-preferred-address-types=InternalIP \
        --allow-privileged=false --profiling=false
    wait_for kube-apiserver "$APISERVER_PID" https_ok "https://127.0.0.1:$KUBE_PORT/readyz" "$admin"

    # --- the host's way in: 127.0.0.1:PORT -> DIR/apiserver.sock -> the namespace's 127.0.0.1:PORT
    rm -f "$dir/apiserver.sock"
    start socat-netns SOCAT_NETNS_PID no socat "UNIX-LISTEN:$dir/apiserver.sock,fork,mode=600" \
        "TCP:127.0.0.1:$KUBE_PORT"
    wait_for socat-netns "$SOCAT_NETNS_PID" test -S "$dir/apiserver.sock"
    (cg_join "$NODE_CGROUP/daemons" "$BASHPID"
     exec setsid socat "TCP-LISTEN:$KUBE_PORT,bind=127.0.0.1,fork,reuseaddr" \
        "UNIX-CONNECT:$dir/apiserver.sock" </dev/null >"$dir/socat-host.log" 2>&1) &
    record SOCAT_HOST_PID "$!"
    wait_for socat-host "$SOCAT_HOST_PID" curl -sSf -o /dev/null --max-time 2 \
        --cacert "$dir/pki/ca.crt" -H "Authorization: Bearer $admin" "https://127.0.0.1:$KUBE_PORT/readyz"

    # --- kube-controller-manager and kube-scheduler -----------------------------------------
    # The endpoint controllers log each sync of a Service (--vmodule): what a
    # load failing through a NodePort is read against (tests/support/node.rs
    # service_report), a few hundred KB a run.
    start kube-controller-manager KCM_PID no "$bin_dir/kube-controller-manager" \
        --kubeconfig="$dir/kube-controller-manager.kubeconfig" \
        --leader-elect=false --port=0 --secure-port=10257 --bind-address=127.0.0.1 \
        --service-account-private-key-file="$dir/pki/sa.key" --root-ca-file="$dir/pki/ca.crt" \
        --use-service-account-credentials=true --profiling=false \
        --v=2 --vmodule=endpointslice_controller=4,endpoints_controller=4
    start kube-scheduler SCHEDULER_PID no "$bin_dir/kube-scheduler" \
        --kubeconfig="$dir/kube-scheduler.kubeconfig" \
        --leader-elect=false --port=0 --secure-port=10259 --bind-address=127.0.0.1 --profiling=false
    wait_for kube-controller-manager "$KCM_PID" in_node curl -sSfk -o /dev/null --max-time 2 https://127.0.0.1:10257/healthz
    wait_for kube-scheduler "$SCHEDULER_PID" in_node curl -sSfk -o /dev/null --max-time 2 https://127.0.0.1:10259/healthz

    # --- containerd, with the CNI bridge ----------------------------------------------------
    mkdir -p "$dir/containerd" "$dir/cni/net.d" "$dir/cni/ipam"
    # The pods' routes go to the Service range and the node's address through
    # cni0's gateway, and nowhere else: no default route in a pod either.
    cat >"$dir/cni/net.d/10-corral.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "corral",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "10.88.0.1"}]],
        "routes": [{"dst": "$SERVICE_CIDR"}, {"dst": "$NODE_IP/32"}],
        "dataDir": "$dir/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
    local pause_ref=localhost/corral/pause:3.4
    cat >"$dir/containerd/config.toml" <<EOF
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$dir/containerd/containerd.sock"
[ttrpc]
  address = "$dir/containerd/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_ref"
  disable_apparmor = true
  enable_selinux = false
  # These machines run root without CAP_SYS_RESOURCE, so no process may lower
  # its oom_score_adj: runc failed every sandbox with "nsexec: failed to
  # update /proc/self/oom_score_adj: Permission denied" (kubelet asks -998 for
  # a Guaranteed pod). Restricted, the pods get containerd's own (0) or more.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "${KUBE_NODE_RUNC:-$(command -v runc)}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni/net.d"
EOF
    start containerd CONTAINERD_PID yes containerd --config "$dir/containerd/config.toml"
    wait_for containerd "$CONTAINERD_PID" in_node_mnt ctr --address "$dir/containerd/containerd.sock" version

    # The sandbox image: build/pause of the same source tree.
    t0="$(now_ms)"
    local pause_tar
    pause_tar="$(bash "$script_dir/node-images.sh" pause "$dir/images" "$bin_dir/pause")"
    import_image localhost/corral/pause "$pause_tar" 2>&1 | sed 's/^/  /' >&2
    # (the list first, then grep: `ctr | grep -q` fails under pipefail when
    # grep's early exit gives ctr a SIGPIPE, which made up fail once)
    local images
    images="$(in_node_mnt ctr --address "$dir/containerd/containerd.sock" -n k8s.io images ls -q)"
    grep -qx "$pause_ref" <<<"$images" ||
        die "the pause image is not in containerd as $pause_ref"
    took pause-image "$t0"

    # --- kubelet --------------------------------------------------------------------------------
    mkdir -p "$dir/kubelet"
    printf 'nameserver 127.0.0.1\noptions ndots:1 timeout:1 attempts:1\n' >"$dir/resolv.conf"
    cat >"$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 0.0.0.0
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
# In a namespace nothing outside reaches: the API server (kubectl logs,
# exec) is its only client.
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
cgroupRoot: /$NODE_CGROUP
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
failSwapOn: false
# No cluster DNS: a pod's lookups go to its own 127.0.0.1 and fail at once.
resolvConf: $dir/resolv.conf
clusterDomain: cluster.local
# A shared machine's disk may be fuller than a node's: evict only when nearly
# full, and never collect the imported images (they cannot be pulled again).
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
runtimeRequestTimeout: 2m
nodeStatusUpdateFrequency: 4s
syncFrequency: 10s
rotateCertificates: false
EOF
    start kubelet KUBELET_PID yes "$bin_dir/kubelet" --config="$dir/kubelet.yaml" \
        --kubeconfig="$dir/kubelet.kubeconfig" --root-dir="$dir/kubelet" \
        --container-runtime=remote \
        --container-runtime-endpoint="unix://$dir/containerd/containerd.sock" \
        --node-ip="$NODE_IP" --hostname-override="$NODE_NAME" --v=2
    wait_for kubelet "$KUBELET_PID" in_node curl -sSf -o /dev/null --max-time 2 http://127.0.0.1:10248/healthz

    # --- kube-proxy -------------------------------------------------------------------------------
    cat >"$dir/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $dir/kube-proxy.kubeconfig}
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
bindAddress: 0.0.0.0
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# conntrack's limits are the host's (global): leave them as they are.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {masqueradeAll: false, syncPeriod: 10s, minSyncPeriod: 0s}
EOF
    start kube-proxy PROXY_PID no "$bin_dir/kube-proxy" --config="$dir/kube-proxy.yaml" --v=2
    wait_for kube-proxy "$PROXY_PID" in_node curl -sSf -o /dev/null --max-time 2 http://127.0.0.1:10256/healthz

    # --- the node Ready (kubelet registered, containerd's CNI ready) -----------------------------
    t0="$(now_ms)"
    until node_ready; do
        local part
        for part in kubelet:$KUBELET_PID containerd:$CONTAINERD_PID kube-proxy:$PROXY_PID; do
            alive "${part#*:}" || { tail_log "${part%%:*}"; die "${part%%:*} exited"; }
        done
        if (( $(now_ms) - t0 > timeout * 1000 )); then
            "$kubectl" --kubeconfig "$dir/kubeconfig" describe node "$NODE_NAME" >&2 || true
            tail_log kubelet; tail_log containerd
            die "node $NODE_NAME not Ready after ${timeout}s"
        fi
        sleep 0.5
    done
    took node-ready "$t0"
    # The default ServiceAccount (the token controller's) that pods need.
    t0="$(now_ms)"
    until "$kubectl" --kubeconfig "$dir/kubeconfig" -n default get serviceaccount default >/dev/null 2>&1; do
        (( $(now_ms) - t0 < timeout * 1000 )) || { tail_log kube-controller-manager; die "no default ServiceAccount"; }
        sleep 0.5
    done
    took serviceaccount "$t0"
    check
    trap - EXIT
    log "up in $(( $(now_ms) - t_all ))ms: ${timings[*]}"
    echo "$dir/kubeconfig"
}

[[ $# -ge 2 ]] || usage
cmd="$1"
mkdir -p "$2"
dir="$(cd -- "$2" && pwd)"
case "$cmd" in
up) [[ $# -eq 2 ]] || usage; up ;;
down) [[ $# -eq 2 ]] || usage; down ;;
check) [[ $# -eq 2 ]] || usage; check ;;
import) [[ $# -eq 4 ]] || usage; import_image "$3" "$4" ;;
run)
    [[ $# -eq 2 ]] || usage
    trap 'down' EXIT
    trap 'exit 143' TERM
    trap 'exit 130' INT
    kubeconfig="$(up)"
    echo "ready $kubeconfig"
    # Until the harness goes away (its end of the pipe closes), whatever way.
    # (tests/support/node.rs writes nothing: it runs `check` on its own.)
    while read -r _; do :; done
    ;;
*) usage ;;
esac
