#!/usr/bin/env bash
# kube-apiserver v1.20 built once from Debian's `kubernetes` source package
# (and Debian's etcd installed): prints the binary's absolute path as the only
# line on stdout. The recipe, the cache and the fixes are kube-build.sh's.
#
#   APISERVER=$(bash .ci/kube-apiserver.sh)
set -euo pipefail
exec bash "$(dirname -- "${BASH_SOURCE[0]}")/kube-build.sh" kube-apiserver
