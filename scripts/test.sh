#!/usr/bin/env bash
# README command 2: set up (first time) and run the whole test suite: lint, layer contracts, unit,
# API, storage on SQLite and PostgreSQL, integration against a real server, and the slow end-to-end tests.
#   scripts/test.sh              everything (what CI runs)
#   scripts/test.sh -m "not slow and not integration"   the fast part; arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
# What this machine is and which precision dtype "auto" picks here, measured (tunery.hardware); the
# numerically sensitive tests run in fp32 and, where bf16 is faster, in bf16 too (tests/precision.py).
# TUNERY_WORKER__DTYPE=fp32|bf16 forces one precision for those tests and for the servers tests start.
.venv/bin/python -m tunery.hardware || true
[ -n "${TUNERY_WORKER__DTYPE:-}" ] && echo "precision forced: TUNERY_WORKER__DTYPE=$TUNERY_WORKER__DTYPE"

# PostgreSQL on loopback for the storage and API tests, unless the caller points at one already.
if [ -z "${TUNERY_TEST_DATABASE_URL:-}" ]; then
  if [ "$(id -u)" = "0" ] || command -v pg_ctlcluster >/dev/null 2>&1; then
    eval "$(bash scripts/postgres.sh)"  # prints: export TUNERY_TEST_DATABASE_URL=...
  else
    echo "warning: not root and no PostgreSQL: the PostgreSQL half of the storage tests will be skipped" >&2
  fi
fi

# Debian's chromium for the portal's browser tests (Playwright drives it; it cannot download browsers here).
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ||
    echo "warning: could not install chromium; the browser tests will be skipped" >&2
fi

.venv/bin/ruff check src tests bench
.venv/bin/lint-imports
.venv/bin/mypy  # strict on tunery.domain, tunery.services, tunery.api ([tool.mypy] in pyproject.toml)
exec .venv/bin/pytest "$@"
