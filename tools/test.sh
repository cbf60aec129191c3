#!/usr/bin/env bash
# The test command: the whole suite with pytest, in the repository's .venv (./setup.sh makes it).
# Extra arguments go to pytest, e.g. tools/test.sh tests/pipeline -k cifar
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
exec .venv/bin/python -m pytest -q --durations=15 "${@:-tests}"
