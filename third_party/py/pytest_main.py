"""Runs one pytest file under `bazel test`, as `pytest` from the repository root would.

`py_pytest` (defs.bzl) passes the test file as an argument. The working directory is the
workspace's runfiles tree, which mirrors the repository (only the files the target declares),
so the test, tests/conftest.py and the imported modules resolve as they do in a checkout.
"""

import os
import sys

import pytest


def main():
  # Python put this file's real directory (in the source tree) first on sys.path; imports must
  # come from the runfiles tree only, as declared by the target.
  if sys.path and os.path.realpath(sys.path[0]) == os.path.dirname(os.path.realpath(__file__)):
    del sys.path[0]
  opts = [
      # The runfiles tree is Bazel's, not ours: keep pytest from writing .pytest_cache into it.
      "-p", "no:cacheprovider",
      "-q",
  ]
  # Bazel's test environment: per-test XML (shown per test case by CI tools), a private
  # scratch directory for tmp_path, and `bazel test --test_filter=...` as pytest's -k.
  if os.environ.get("XML_OUTPUT_FILE"):
    opts.append("--junitxml=" + os.environ["XML_OUTPUT_FILE"])
  if os.environ.get("TEST_TMPDIR"):
    opts.append("--basetemp=" + os.path.join(os.environ["TEST_TMPDIR"], "pytest"))
  if os.environ.get("TESTBRIDGE_TEST_ONLY"):
    opts += ["-k", os.environ["TESTBRIDGE_TEST_ONLY"]]
  sys.exit(pytest.main(opts + sys.argv[1:]))


if __name__ == "__main__":
  main()
