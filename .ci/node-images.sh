#!/usr/bin/env bash
# OCI images for the test node (.ci/kube-node.sh), built without a Docker
# engine or a registry: root filesystems from Debian packages, layers and
# configuration written by umoci, one OCI archive per image for
# `ctr images import`. Prints the archive's absolute path as the only line
# on stdout; progress goes to stderr.
#
#   bash .ci/node-images.sh pause  OUT PAUSE_BINARY    # the pod sandbox
#   bash .ci/node-images.sh corral OUT CORRAL_BINARY   # the top-level Dockerfile
#   bash .ci/node-images.sh mysite OUT CORRAL_BINARY   # manifests/examples/django/Dockerfile
#
# What each holds, against what its Dockerfile says (tests/node.rs checks
# that they agree: user, entrypoint, command, working directory, ports, and
# the pinned Python packages):
#   pause   build/pause of the kubernetes source tree (kube-build.sh pause),
#           as upstream's image: /pause, user 65535, entrypoint /pause.
#   corral  as gcr.io/distroless/cc-debian12:nonroot, which is made of
#           Debian's libc6, libgcc-s1 and ca-certificates: the files of
#           those packages that corral loads (ldd), the CA bundle, a nonroot
#           user 65532 in /etc/passwd, /tmp; /usr/local/bin/corral; user
#           65532:65532, entrypoint corral, command run.
#   mysite  as python:3.11-slim-bookworm: a debootstrap --variant=minbase of
#           Debian bookworm with Debian's python3 (3.11), the Dockerfile's
#           `pip install` pins installed from PyPI (wheels for CPython 3.11,
#           by this machine's pip) into /usr/local, corral copied in, the
#           Django project of tests/django_app at /app.
# CORRAL_BINARY is copied without its debug sections (objcopy --strip-debug):
# the tests put the binary they were built with in the images, so the pods
# run the code under test.
#
# Cache: ${CORRAL_IMAGE_CACHE:-/var/cache/corral/images}/<recipe>/ holds the
# mysite base image (root filesystem + Python packages, an OCI layout), keyed
# by a recipe name that spells the suite, Python and the pins, e.g.
# mysite-base-bookworm-python3-Django-5.2.19-uvicorn-standard-0.54.0-r1.
# A cold base takes 2-4 minutes (debootstrap downloads ~100 packages);
# assembling an image from it takes seconds.
set -euo pipefail

script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd -- "$script_dir/.." && pwd)"
cache_root="${CORRAL_IMAGE_CACHE:-/var/cache/corral/images}"
suite=bookworm
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo_root/Cargo.toml" | head -n1)"

log() { echo "node-images: $*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { echo "usage: $0 pause|corral|mysite OUT BINARY" >&2; exit 2; }

[[ $# -eq 3 ]] || usage
kind="$1" out="$2" binary="$3"
[[ -x $binary ]] || die "not an executable: $binary"
mkdir -p "$out"
out="$(cd -- "$out" && pwd)"

need=(umoci binutils)
[[ $kind != mysite ]] || need+=(debootstrap)
bash "$script_dir/apt-install.sh" "${need[@]}"

work="$(mktemp -d "$out/.build-$kind-XXXXXX")"
trap 'rm -rf "$work"' EXIT

# new_layout DIR TAG: an empty image
new_layout() {
    umoci init --layout "$1"
    umoci new --image "$1:$2"
}

# add DIR:TAG SRC: SRC's contents become one layer at /
add_rootfs() {
    umoci unpack --image "$1" "$work/bundle" >/dev/null
    cp -a "$2/." "$work/bundle/rootfs/"
    umoci repack --image "$1" "$work/bundle"
    rm -rf "$work/bundle"
}

# archive LAYOUT TAG NAME: OUT/NAME.tar, an OCI archive whose one tag is TAG
# (`ctr images import --base-name REPO` names it REPO:TAG)
archive() {
    local layout="$1" tag="$2" name="$3" t
    for t in $(umoci ls --layout "$layout"); do
        [[ $t == "$tag" ]] || umoci rm --image "$layout:$t"
    done
    umoci gc --layout "$layout"
    tar -C "$layout" -cf "$out/$name.tar.tmp" .
    mv -f "$out/$name.tar.tmp" "$out/$name.tar"
    log "$name: $out/$name.tar ($(du -h "$out/$name.tar" | cut -f1))"
    echo "$out/$name.tar"
}

stripped_corral() { # stripped_corral DEST
    install -d "$(dirname "$1")"
    objcopy --strip-debug "$binary" "$1"
    chmod 0755 "$1"
}

distroless_env=(
    --config.env=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    --config.env=SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
)

case "$kind" in
pause)
    tag=3.4
    mkdir -p "$work/root"
    install -m 0755 "$binary" "$work/root/pause"
    new_layout "$work/oci" "$tag"
    add_rootfs "$work/oci:$tag" "$work/root"
    umoci config --image "$work/oci:$tag" --config.user=65535:65535 \
        --config.entrypoint=/pause --history.created_by="corral .ci/node-images.sh pause"
    archive "$work/oci" "$tag" pause
    ;;

corral)
    root="$work/root"
    mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/home/nonroot"
    chmod 1777 "$root/tmp"
    chown 65532:65532 "$root/home/nonroot"
    stripped_corral "$root/usr/local/bin/corral"
    # The shared libraries corral loads, at the paths the loader looks for
    # them (from Debian's libc6 and libgcc-s1), and the CA bundle of Debian's
    # ca-certificates, as distroless/cc has them.
    while read -r lib; do
        [[ -n $lib ]] || continue
        real="$(readlink -f "$lib")"
        install -D -m 0755 "$real" "$root$real"
        [[ $real == "$lib" ]] || { mkdir -p "$root$(dirname "$lib")"; ln -sfn "$real" "$root$lib"; }
    done < <(ldd "$binary" | awk '/=> \// {print $3} /^\t\/[^ ]+ \(/ {print $1}')
    [[ -f /etc/ssl/certs/ca-certificates.crt ]] || die "no /etc/ssl/certs/ca-certificates.crt (ca-certificates)"
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$root/etc/group"
    tag="$version"
    new_layout "$work/oci" "$tag"
    add_rootfs "$work/oci:$tag" "$root"
    umoci config --image "$work/oci:$tag" "${distroless_env[@]}" \
        --config.user=65532:65532 --config.workingdir=/home/nonroot \
        --config.exposedports=8000/tcp --config.exposedports=9000/tcp --config.exposedports=8080/tcp \
        --config.entrypoint=corral --config.cmd=run \
        --history.created_by="corral .ci/node-images.sh corral (Dockerfile)"
    archive "$work/oci" "$tag" corral
    ;;

mysite)
    dockerfile="$repo_root/manifests/examples/django/Dockerfile"
    # The Dockerfile's own pins: RUN pip install "Django==5.2.19" "uvicorn[standard]==0.54.0"
    read -r -a pins < <(sed -n 's/^RUN pip install //p' "$dockerfile" | tr -d '"')
    [[ ${#pins[@]} -gt 0 ]] || die "no 'RUN pip install' line in $dockerfile"
    recipe="mysite-base-$suite-python3-$(printf '%s-' "${pins[@]}" | tr -c 'A-Za-z0-9.\n-' '-' | sed 's/-\{2,\}/-/g; s/-$//')-r1"
    base="$cache_root/$recipe"
    if [[ ! -f $base/done ]]; then
        mkdir -p "$cache_root"
        exec 9>"$cache_root/.$recipe.lock"
        flock 9
    fi
    if [[ ! -f $base/done ]]; then
        log "building the base image $recipe (debootstrap $suite + python3, pip ${pins[*]}); 2-4 min"
        start=$SECONDS
        rm -rf "$base"
        mkdir -p "$base"
        mirror="$(grep -rhsE '^URIs:.*debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 | awk '{print $2}')"
        mirror="${mirror:-http://deb.debian.org/debian}"
        rootfs="$work/rootfs"
        if ! debootstrap --variant=minbase --include=python3,ca-certificates \
            "$suite" "$rootfs" "$mirror" >"$base/debootstrap.log" 2>&1; then
            tail -n 30 "$base/debootstrap.log" >&2
            die "debootstrap failed (log: $base/debootstrap.log)"
        fi
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
            "$rootfs"/var/log/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
        py="$(readlink -f "$rootfs/usr/bin/python3")"
        pyver="$(basename "$py")"       # python3.11
        [[ $pyver == python3.11 ]] || die "the rootfs has $pyver, the pins want python3.11 wheels"
        # pip of this machine's CPython 3.11, binary wheels for 3.11 only, into
        # Debian's /usr/local path (python:3.11-slim has them in /usr/local too).
        site="$work/site"
        if ! python3 -m pip install --quiet --disable-pip-version-check --no-compile \
            --only-binary=:all: --python-version 3.11 --implementation cp \
            --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
            --platform manylinux_2_17_x86_64 --platform linux_x86_64 --platform any \
            --target "$site" "${pins[@]}" >"$base/pip.log" 2>&1; then
            tail -n 30 "$base/pip.log" >&2
            die "pip install ${pins[*]} failed (log: $base/pip.log)"
        fi
        mkdir -p "$rootfs/usr/local/lib/$pyver/dist-packages" "$rootfs/usr/local/bin"
        if [[ -d $site/bin ]]; then
            for s in "$site"/bin/*; do
                sed '1s|^#!.*python.*$|#!/usr/bin/python3|' "$s" >"$rootfs/usr/local/bin/$(basename "$s")"
                chmod 0755 "$rootfs/usr/local/bin/$(basename "$s")"
            done
            rm -rf "$site/bin"
        fi
        cp -a "$site/." "$rootfs/usr/local/lib/$pyver/dist-packages/"
        new_layout "$base/oci" base
        add_rootfs "$base/oci:base" "$rootfs"
        rm -rf "$rootfs" "$site"
        touch "$base/done"
        log "base image built in $((SECONDS - start))s: $base"
    fi
    tag="$version"
    # The blobs are content-addressed and never rewritten: hard links will
    # do; index.json is rewritten, so it is copied.
    mkdir -p "$work/oci"
    cp -al "$base/oci/blobs" "$work/oci/blobs" 2>/dev/null || cp -a "$base/oci/blobs" "$work/oci/blobs"
    cp "$base/oci/index.json" "$base/oci/oci-layout" "$work/oci/"
    umoci tag --image "$work/oci:base" "$tag"
    app="$work/app"
    mkdir -p "$app/usr/local/bin" "$app/app"
    stripped_corral "$app/usr/local/bin/corral"
    # COPY . /app of the build context (tests/django_app), without caches.
    (cd "$repo_root/tests/django_app" && tar --exclude=__pycache__ --exclude='*.pyc' -cf - .) |
        tar -C "$app/app" -xf -
    umoci insert --image "$work/oci:$tag" "$app/usr/local/bin/corral" /usr/local/bin/corral
    umoci insert --image "$work/oci:$tag" "$app/app" /app
    umoci config --image "$work/oci:$tag" \
        --config.env=PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
        --config.env=LANG=C.UTF-8 \
        --config.env=PYTHONDONTWRITEBYTECODE=1 --config.env=PYTHONUNBUFFERED=1 \
        --config.env=PIP_NO_CACHE_DIR=1 --config.env=PIP_DISABLE_PIP_VERSION_CHECK=1 \
        --config.user=65532:65532 --config.workingdir=/app \
        --config.exposedports=8000/tcp --config.exposedports=9000/tcp \
        --config.entrypoint=corral --config.entrypoint=run \
        --config.cmd=-- --config.cmd=uvicorn --config.cmd=--fd '--config.cmd={fd}' \
        --config.cmd=--no-access-log --config.cmd=mysite.asgi:application \
        --history.created_by="corral .ci/node-images.sh mysite (manifests/examples/django/Dockerfile)"
    archive "$work/oci" "$tag" mysite
    ;;
*)
    usage
    ;;
esac
