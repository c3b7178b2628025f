#!/usr/bin/env bash
# Install everything the tests need (Xvfb and Qt's X libraries from apt, Python packages) and run them.
set -euo pipefail
cd "$(dirname "$0")/.."
apt_packages=(xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0
  libxcb-xinerama0 libxcb-randr0 libxcb-shape0 libxcb-cursor0 libxkbcommon-x11-0 libgl1 libegl1
  libfontconfig1 libdbus-1-3)
missing=()
for p in "${apt_packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
bash scripts/install.sh testing
ruff check src tests benchmarks
python3 -m pytest -q "$@"
