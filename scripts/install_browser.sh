#!/usr/bin/env bash
# Install Debian's Chromium for the dashboard's browser tests (tests/test_dashboard.py).
#
# The tests drive /usr/bin/chromium with Playwright for Python; Playwright's own
# browser download (`playwright install`) is never used. CI runs this script
# before the tests; it does nothing when Chromium is already there.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
  echo "install_browser: $CHROMIUM is present"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo -n)
else
  echo "install_browser: need root (or sudo) to apt-get install chromium" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq chromium fonts-dejavu-core >/dev/null

if [ ! -x "$CHROMIUM" ]; then
  echo "install_browser: apt-get finished but $CHROMIUM is missing" >&2
  exit 1
fi
echo "install_browser: installed $CHROMIUM"
