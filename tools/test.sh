#!/usr/bin/env bash
# The test command: the whole suite with pytest, in the repository's .venv (./setup.sh makes it).
# Two pytest-xdist workers (TEST_WORKERS=N to change, 0 for none), one test file each at a time
# (--dist loadfile: a file's module fixtures are built once): most of the suite is
# single-threaded Python (tracing, saving, real child processes), so two workers use both
# cores of a 2-core machine. Extra arguments go to pytest, e.g. tools/test.sh tests/pipeline -k cifar;
# with no path, pytest collects tests/ (pyproject.toml, [tool.pytest.ini_options]).
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
workers=${TEST_WORKERS:-2}
parallel=()
if [[ "$workers" != 0 ]]; then parallel=(-n "$workers" --dist loadfile); fi
exec .venv/bin/python -m pytest -q --durations=15 "${parallel[@]}" "$@"
