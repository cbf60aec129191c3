"""`py_pytest`: a py_test that runs one pytest-style `*_test.py` file with pytest.

    load("//third_party/py:pytest.bzl", "py_pytest")

    py_pytest(
        name = "features_test",
        srcs = ["features_test.py"],
        deps = ["//pipeline:features", "//tests:testdata"],
    )

`bazel test` then runs the same test functions and fixtures as `pytest`, with the test's
package `__init__.py` and tests/conftest.py added for you. `deps` lists what the test file
imports from this repository; third-party packages come from the venv (python_venv.bzl).
"""

def py_pytest(name, srcs, deps = [], data = [], args = [], **kwargs):
    if len(srcs) != 1:
        fail("py_pytest takes exactly one test file, got %s" % srcs)
    native.py_test(
        name = name,
        srcs = srcs + native.glob(["__init__.py"]) + ["//third_party/py:pytest_main.py"],
        main = "//third_party/py:pytest_main.py",
        args = ["$(rootpath %s)" % srcs[0]] + args,
        deps = deps + ["//tests:conftest"],
        data = data,
        python_version = "PY3",
        srcs_version = "PY3",
        **kwargs
    )
