#!/usr/bin/env bash
# Makes `bazel test //...` work offline: installs Debian's Bazel 4.2.3 (bazel-bootstrap) and
# the rules_java it needs (bazel-rules-java) when missing, then runs the configure step that
# points Bazel's Python at .venv (third_party/py/python_venv.bzl) and prints the interpreter.
# Idempotent; run after ./setup.sh. Usage: tools/bazel_setup.sh
# A newer Bazel with a network instead: docs/bazel.md.
set -euo pipefail
cd "$(dirname "$0")/.."

# WORKSPACE reads rules_java from Debian's package path.
if ! command -v bazel >/dev/null || [ ! -f /usr/share/bazel/rules/java/java/defs.bzl ]; then
  if ! command -v apt-get >/dev/null; then
    echo "bazel_setup: no apt-get here; install Bazel as docs/bazel.md says for other systems" >&2
    exit 1
  fi
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo=sudo; fi
  echo "bazel_setup: installing bazel-bootstrap and bazel-rules-java (Debian's Bazel 4.2.3, ~150 MB)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq bazel-bootstrap bazel-rules-java >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "bazel_setup: .venv is missing: run ./setup.sh first" >&2
  exit 1
fi
# The configure step is a repository rule that Bazel runs on first use; running it here means
# a wrong or missing interpreter shows up now, with its path, rather than in the first test.
python=$(bazel query --noshow_progress --output=build @python_venv//:py3_runtime 2>/dev/null \
  | sed -n 's/.*interpreter_path = "\(.*\)".*/\1/p')
if [ -z "$python" ]; then
  bazel query @python_venv//:py3_runtime >/dev/null  # Shows Bazel's error.
  exit 1
fi
echo "bazel_setup: Bazel $(dpkg-query -W -f '${Version}' bazel-bootstrap 2>/dev/null) ready; py_binary/py_test run $python"
