#!/usr/bin/env bash
# Runs console_test.mjs in Debian's headless chromium; installs playwright-core
# from package-lock.json first (npm ci) when this checkout does not have it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ ! -d "$here/node_modules/playwright-core" ]; then
  (cd "$here" && npm ci --no-audit --no-fund >&2)
fi
exec node "$here/console_test.mjs"
