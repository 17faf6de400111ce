#!/bin/sh
# Regenerate deploy/kube-flannel.yml from the chart's default values (tests/deploy checks they agree).
#   deploy/gen-manifest.sh [path/to/helm]      (make tools puts helm in .tools/)
set -eu
here=$(dirname "$0")
helm=${1:-$here/../.tools/helm}
out=$here/kube-flannel.yml
{
  cat "$here/kube-flannel.header.yml"
  "$helm" template flannel "$here/chart/pyflannel" --namespace kube-flannel | grep -v '^# Source: '
} >"$out.tmp"
mv "$out.tmp" "$out"
