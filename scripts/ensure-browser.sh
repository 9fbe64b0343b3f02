#!/usr/bin/env bash
# Make sure Debian's Chromium is at /usr/bin/chromium for the console's browser tests, which
# drive it with Playwright (executable_path): installed with apt-get when missing (root only).
# Playwright's own browser download is never used.
set -euo pipefail

[ -x /usr/bin/chromium ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "ensure-browser: please install chromium (apt-get install chromium; needs root)" >&2
  exit 1
fi
echo "ensure-browser: installing chromium"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
[ -x /usr/bin/chromium ] || { echo "ensure-browser: chromium did not install" >&2; exit 1; }
