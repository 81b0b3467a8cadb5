#!/usr/bin/env bash
# The Prometheus Operator's resource schemas (PodMonitor, ServiceMonitor),
# from the npm package @kubernetes-models/prometheus-operator, for checking
# the monitors corral ships: the test API server has no Prometheus Operator
# CRDs to dry-run them against. Idempotent; prints the node_modules
# directory as the only stdout line.
set -euo pipefail

version=6.0.0
dir="${CORRAL_TOOLS:-/var/cache/corral/tools}/prometheus-operator-models-$version"
log() { echo "monitoring-models: $*" >&2; }

if [[ ! -f $dir/.complete ]]; then
    log "installing @kubernetes-models/prometheus-operator@$version from npm"
    rm -rf "$dir"
    mkdir -p "$dir"
    npm install --prefix "$dir" --no-audit --no-fund --silent \
        "@kubernetes-models/prometheus-operator@$version" >&2
    touch "$dir/.complete"
fi
echo "$dir/node_modules"
