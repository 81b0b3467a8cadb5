#!/usr/bin/env bash
# Build (once, cached outside the checkout) Kubernetes components from
# Debian's `kubernetes` source package, make sure etcd is installed, and print
# the absolute path of each binary asked for, one a line, on stdout.
#
#   APISERVER=$(bash .ci/kube-build.sh kube-apiserver)    # .ci/kube-apiserver.sh
#   bash .ci/kube-build.sh kubelet kube-proxy kube-controller-manager \
#       kube-scheduler pause                              # the node (.ci/kube-node.sh)
#
# COMPONENT is a directory of cmd/ (built with go) or `pause` (build/pause's
# C source, built with gcc -static: the pod sandbox's process). Components
# missing from the cache are built together in one go (one source tree, one
# `make generated_files`, one go build of the packages they share).
#
# Everything comes from Debian bookworm: golang-1.19-go, etcd-server, the
# kubernetes source package (v1.20.x, Go dependencies vendored), with two
# changes:
#   reflect2 1.0.2 from Debian replaces the vendored 1.0.1 (that one makes the
#     server die with "fatal error: fault" in map iteration when built with
#     Go >= 1.18);
#   upstream fix pr104990 (the v1.20 backport of kubernetes#104969, released in
#     v1.20.11) is applied: without it a CRD whose schema has a literal null
#     (e.g. `enum: [A, B, null]`, as schemars writes for Option<enum>) is
#     rejected with "per-version schemas may not all be set to identical
#     values" (and sometimes "spec.preserveUnknownFields: Invalid value: true"),
#     because the conversion error is swallowed half-way.
#
# Cache: ${CORRAL_KUBE_CACHE:-/var/cache/corral/kube}/v<upstream version>-<recipe>/
# (<recipe> names the replaced libraries and applied fixes, e.g.
# reflect2-1.0.2-pr104990, so a new recipe never reuses an older binary)
#   kube-apiserver kubelet ...   the binaries
#   *.log                        logs of the last build (tail printed on failure)
# A cold build of kube-apiserver takes 10-20 minutes on 2 cores, the four node
# components together about as long again; afterwards this is a no-op.
# Progress goes to stderr. Needs root (or sudo) only to install packages.
set -euo pipefail

[[ $# -ge 1 ]] || { echo "usage: $0 COMPONENT..." >&2; exit 2; }
components=("$@")
for c in "${components[@]}"; do
    [[ $c =~ ^[a-z][a-z0-9-]*$ ]] || { echo "bad component name: $c" >&2; exit 2; }
done

cache_root="${CORRAL_KUBE_CACHE:-/var/cache/corral/kube}"
go_bin=/usr/lib/go-1.19/bin
gocode=/usr/share/gocode/src
# Vendored libraries replaced by Debian's: "short name|import path|package"
replace=(
    "reflect2|github.com/modern-go/reflect2|golang-github-modern-go-reflect2-dev"
)
# Source fixes (functions below), applied in this order with patch -p1
fixes=(pr104990)
packages=(golang-1.19-go rsync etcd-server make patch gcc libc6-dev)
for r in "${replace[@]}"; do packages+=("${r##*|}"); done
src_list=/etc/apt/sources.list.d/corral-debian-src.sources

log() { echo "kube-build: $*" >&2; }
die() { log "error: $*"; exit 1; }

as_root() {
    if [[ $EUID -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root to run: $*"
    fi
}

apt_updated=0
apt_update() {
    if [[ $apt_updated -eq 0 ]]; then
        log "apt-get update"
        as_root apt-get update -qq >&2
        apt_updated=1
    fi
}

# --- deb-src entry (needed to learn the version and fetch the source) -------
have_deb_src() {
    grep -rqsE '^(deb-src[[:space:]]|Types:.*deb-src)' \
        /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null
}
if ! have_deb_src; then
    log "adding deb-src entry $src_list"
    mirror="$(grep -rhsE '^URIs:.*debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 | awk '{print $2}')"
    mirror="${mirror:-http://deb.debian.org/debian}"
    as_root tee "$src_list" >/dev/null <<EOF
Types: deb-src
URIs: $mirror
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    apt_update
fi

# --- packages ----------------------------------------------------------------
bash "$(dirname -- "${BASH_SOURCE[0]}")/apt-install.sh" "${packages[@]}"
command -v etcd >/dev/null || die "etcd not found after installing etcd-server"
[[ -x $go_bin/go ]] || die "$go_bin/go missing"
recipe=""   # e.g. reflect2-1.0.2-pr104990
for r in "${replace[@]}"; do
    IFS='|' read -r name imp pkg <<<"$r"
    [[ -d $gocode/$imp ]] || die "$gocode/$imp missing"
    v="$(dpkg-query -W -f='${Version}' "$pkg")"
    v="${v%-*}"; v="${v#*:}"
    recipe+="${recipe:+-}$name-$v"
done
for f in "${fixes[@]}"; do recipe+="${recipe:+-}$f"; done

# --- which version does Debian ship? ----------------------------------------
src_version() {
    apt-cache showsrc kubernetes 2>/dev/null | awk '/^Version:/ {print $2}' |
        sort -V | tail -n1
}
deb_version="$(src_version)"
if [[ -z $deb_version ]]; then
    apt_update
    deb_version="$(src_version)"
fi
[[ -n $deb_version ]] || die "apt-cache showsrc kubernetes found nothing"
# 1.20.5+really1.20.2-1.1+deb12u1 -> 1.20.2
upstream="${deb_version%-*}"
upstream="${upstream#*:}"
upstream="${upstream##*+really}"
version="v$upstream"
cache="$cache_root/$version-$recipe"

# missing: the components asked for that the cache lacks
missing_components() {
    missing=()
    local c
    for c in "${components[@]}"; do
        [[ -x $cache/$c ]] || missing+=("$c")
    done
}
print_paths() {
    local c
    for c in "${components[@]}"; do echo "$cache/$c"; done
}
# exit_if_cached: print the paths and stop when nothing needs building
exit_if_cached() {
    missing_components
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "cached: ${components[*]} in $cache"
        print_paths
        exit 0
    fi
}
exit_if_cached

# --- build -------------------------------------------------------------------
mkdir -p "$cache"
# One build at a time; a second caller waits and then finds the binary.
exec 9>"$cache/.lock"
if ! flock -n 9; then
    log "another build is running, waiting for it"
    flock 9
fi
exit_if_cached

log "building ${missing[*]} $version (Debian $deb_version) in $cache; takes 10-20 min a large component"
start=$SECONDS
work="$cache/work"
rm -rf "$work"
mkdir -p "$work"
current_log=""

built=0
on_exit() {
    local rc=$?
    [[ $built -eq 1 ]] && return 0
    if [[ -n $current_log && -f $current_log ]]; then
        log "FAILED (exit $rc); last lines of $current_log:"
        tail -n 40 "$current_log" >&2
    else
        log "FAILED (exit $rc)"
    fi
    log "source tree kept in $work"
}
trap on_exit EXIT

# step NAME CMD...: run CMD with output into $cache/NAME.log
step() {
    local name="$1"; shift
    current_log="$cache/$name.log"
    log "step $name (log: $current_log)"
    "$@" >"$current_log" 2>&1
}

fetch_source() {
    cd "$work"
    # -o APT::Sandbox::User=root: avoids the _apt "permission denied" warning.
    apt-get source -o APT::Sandbox::User=root "kubernetes=$deb_version"
}
step source fetch_source
src="$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)"
[[ -n $src && -d $src/cmd/kube-apiserver ]] || die "no source tree in $work"
go_cmds=() c_cmds=()
for c in "${missing[@]}"; do
    if [[ $c == pause ]]; then
        c_cmds+=("$c")
    else
        [[ -d $src/cmd/$c ]] || die "no cmd/$c in the source tree"
        go_cmds+=("$c")
    fi
done

# Only the package's own files: no tests, no go.mod, no sub-packages (the
# vendor tree has none of them either; vendor/modules.txt is left as is, the
# build below is in GOPATH mode and does not read it).
for r in "${replace[@]}"; do
    IFS='|' read -r _ imp _ <<<"$r"
    dst="$src/vendor/$imp"
    [[ -d $dst ]] || die "no vendored $imp in the source tree"
    log "replacing vendored $imp with Debian's copy ($gocode/$imp)"
    rm -rf "$dst"
    mkdir -p "$dst"
    find -L "$gocode/$imp" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \
        -o -name 'LICENSE*' \) ! -name '*_test.go' -exec cp -L -t "$dst" {} +
done

# kubernetes#104969 "Fix conversion of literal null JSON values", as
# cherry-picked to release-1.20 (#104990): a literal null in a CRD schema
# (enum/default/example) made the v1 -> internal conversion fail, and
# Convert_v1_CustomResourceDefinitionSpec_To_apiextensions_... swallowed that
# error, leaving a half-converted spec that validation then rejects.
# pr104990's change to JSON conversion, the same in the v1 and v1beta1
# packages: json_null_hunk VERSION
json_null_hunk() {
    cat <<PATCH
@@ -36,24 +38,33 @@
 	return nil
 }
 
+var nullLiteral = []byte(\`null\`)
+
 func Convert_apiextensions_JSON_To_${1}_JSON(in *apiextensions.JSON, out *JSON, s conversion.Scope) error {
 	raw, err := json.Marshal(*in)
 	if err != nil {
 		return err
 	}
-	out.Raw = raw
+	if len(raw) == 0 || bytes.Equal(raw, nullLiteral) {
+		// match JSON#UnmarshalJSON treatment of literal nulls
+		out.Raw = nil
+	} else {
+		out.Raw = raw
+	}
 	return nil
 }
 
 func Convert_${1}_JSON_To_apiextensions_JSON(in *JSON, out *apiextensions.JSON, s conversion.Scope) error {
 	if in != nil {
 		var i interface{}
-		if err := json.Unmarshal(in.Raw, &i); err != nil {
-			return err
+		if len(in.Raw) > 0 && !bytes.Equal(in.Raw, nullLiteral) {
+			if err := json.Unmarshal(in.Raw, &i); err != nil {
+				return err
+			}
 		}
 		*out = i
 	} else {
-		out = nil
+		*out = nil
 	}
 	return nil
 }
PATCH
}
pr104990() {
    cat <<'PATCH'
--- a/staging/src/k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1/conversion.go
+++ b/staging/src/k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1/conversion.go
@@ -17,6 +17,8 @@
 package v1
 
 import (
+	"bytes"
+
 	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
 	apiequality "k8s.io/apimachinery/pkg/api/equality"
 	"k8s.io/apimachinery/pkg/conversion"
PATCH
    json_null_hunk v1
    cat <<'PATCH'
@@ -103,7 +114,7 @@
 
 func Convert_v1_CustomResourceDefinitionSpec_To_apiextensions_CustomResourceDefinitionSpec(in *CustomResourceDefinitionSpec, out *apiextensions.CustomResourceDefinitionSpec, s conversion.Scope) error {
 	if err := autoConvert_v1_CustomResourceDefinitionSpec_To_apiextensions_CustomResourceDefinitionSpec(in, out, s); err != nil {
-		return nil
+		return err
 	}
 
 	if len(out.Versions) == 0 {
--- a/staging/src/k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1beta1/conversion.go
+++ b/staging/src/k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1beta1/conversion.go
@@ -17,6 +17,8 @@
 package v1beta1
 
 import (
+	"bytes"
+
 	"k8s.io/apimachinery/pkg/conversion"
 	"k8s.io/apimachinery/pkg/util/json"
 
PATCH
    json_null_hunk v1beta1
}
for f in "${fixes[@]}"; do
    log "applying source fix $f"
    "$f" | patch -p1 -d "$src" --forward --no-backup-if-mismatch -s >&2 ||
        die "fix $f does not apply"
done

export PATH="$go_bin:$PATH"
export HOME="$work/home"
export GOCACHE="$cache_root/.gocache"   # kept across failed attempts; removed on success
export GOFLAGS=""
export CGO_ENABLED=0
mkdir -p "$HOME"
unset GOROOT GOPATH GO111MODULE

gen_files() {
    cd "$src"
    make generated_files
}
step generated gen_files
[[ -d $src/pkg/generated/openapi ]] || die "make generated_files did not create pkg/generated/openapi"

build_go() {
    export GOPATH="$work/gopath" GO111MODULE=off
    mkdir -p "$GOPATH/src/k8s.io"
    ln -sfn "$src" "$GOPATH/src/k8s.io/kubernetes"
    # Logical (not physical) cd: go must see the GOPATH path of the package.
    cd "$GOPATH/src/k8s.io/kubernetes"
    local pkg=k8s.io/kubernetes/vendor/k8s.io ldflags="-s -w" kv
    local major="${upstream%%.*}" minor="${upstream#*.}"
    minor="${minor%%.*}"
    for kv in "gitVersion=$version" "gitMajor=$major" "gitMinor=$minor" \
        "gitTreeState=clean" "buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"; do
        ldflags+=" -X $pkg/component-base/version.$kv -X $pkg/client-go/pkg/version.$kv"
    done
    go version
    mkdir -p "$work/out"
    # One invocation: the packages the commands share are compiled once.
    go build -v -ldflags "$ldflags" -o "$work/out/" "${go_cmds[@]/#/./cmd/}"
    for c in "${go_cmds[@]}"; do "$work/out/$c" --version; done
}
if [[ ${#go_cmds[@]} -gt 0 ]]; then
    step build build_go
fi

# The pod sandbox's process: build/pause/linux/pause.c, static, as upstream's
# build/pause/Makefile builds it (v1.20's TAG is 3.4: the image is pause:3.4).
build_pause() {
    local c="$src/build/pause/linux/pause.c" tag
    [[ -f $c ]] || { echo "no $c"; return 1; }
    tag="$(sed -n 's/^TAG = //p' "$src/build/pause/Makefile")"
    mkdir -p "$work/out"
    gcc -Os -Wall -Werror -static -DVERSION="v$tag-kubernetes-$version" -o "$work/out/pause" "$c"
    strip "$work/out/pause"
    "$work/out/pause" -v
}
if [[ ${#c_cmds[@]} -gt 0 ]]; then
    step pause build_pause
fi

for c in "${missing[@]}"; do
    mv -f "$work/out/$c" "$cache/$c.tmp"
    mv -f "$cache/$c.tmp" "$cache/$c"
done
echo "$deb_version" >"$cache/debian-version"
built=1
trap - EXIT
log "built ${missing[*]} in $((SECONDS - start))s"
log "removing $work and the go build cache"
rm -rf "$work" "$GOCACHE"
print_paths
