"""The two macros the project's BUILD files use on top of Bazel's native Python rules.

    load("//third_party/py:defs.bzl", "py_module_binary", "py_pytest")

`py_pytest`: a py_test that runs one pytest-style `*_test.py` file with pytest, so that
`bazel test` runs the same test functions and fixtures as `pytest`:

    py_pytest(
        name = "features_test",
        srcs = ["features_test.py"],
        deps = ["//pipeline:features", "//tests:testdata"],
    )

`py_module_binary`: a py_binary that behaves like `python -m <module>` run from the
directory `bazel run` was typed in, so relative paths in flags mean what the user expects:

    py_module_binary(
        name = "train",
        module = "trainer.main",
        srcs = ["main.py"],
        deps = [":train_lib"],
    )

`deps` always lists what the sources import from this repository; third-party packages
(tensorflow, apache_beam, absl, pytest) come from the venv (python_venv.bzl).
"""

def py_pytest(name, srcs, deps = [], data = [], args = [], **kwargs):
    """One pytest file as a py_test; adds the package's __init__.py and tests/conftest.py.

    The requirements files are data of every test: Bazel cannot see into the venv, and this
    way a cached result is not reused after the pinned packages change.
    """
    if len(srcs) != 1:
        fail("py_pytest takes exactly one test file, got %s" % srcs)
    native.py_test(
        name = name,
        srcs = srcs + native.glob(["__init__.py"]) + ["//third_party/py:pytest_main.py"],
        main = "//third_party/py:pytest_main.py",
        args = ["$(rootpath %s)" % srcs[0]] + args,
        deps = deps + ["//tests:conftest"],
        data = data + ["//:python_requirements"],
        python_version = "PY3",
        srcs_version = "PY3",
        **kwargs
    )

def py_module_binary(name, module, srcs, deps = [], **kwargs):
    """A py_binary running `module` as __main__, in the caller's working directory."""
    main = "_%s_main.py" % name
    native.genrule(
        name = name + "_main",
        srcs = ["//third_party/py:module_main.py.tpl"],
        outs = [main],
        cmd = "sed 's/@MODULE@/%s/' $< > $@" % module,
        visibility = ["//visibility:private"],
    )
    native.py_binary(
        name = name,
        srcs = srcs + [main],
        main = main,
        deps = deps,
        python_version = "PY3",
        srcs_version = "PY3",
        **kwargs
    )
