#!/usr/bin/env bash
# README command 1: set up (first time) and start Tunery on the embedded defaults:
# SQLite + local files under ./.tunery, the bundled SmolLM2-135M-Instruct base model.
# Prints the URL and, on first start, a fresh API key. Extra arguments go to `tunery serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/tunery serve "$@"
