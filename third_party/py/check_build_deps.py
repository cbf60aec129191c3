"""Checks that BUILD files mirror the imports: every repository module a target's sources
import is a direct dep, every dep is imported, and every *_test.py / module has a target.

    .venv/bin/python third_party/py/check_build_deps.py        # exit 1 on a mismatch

BUILD files here are plain Starlark calls, so they are run as Python with stand-ins for the
rules; imports come from `ast` (function-level imports count too). Modules outside the
repository (tensorflow, apache_beam...) come from the venv and need no dep. Runs in well
under a second, without Bazel, so CI and editors can run it before `bazel test`.
"""

import ast
import glob as glob_lib
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ("pipeline", "trainer", "tools", "tests")
# Targets whose deps are supplied by a macro rather than written in the BUILD file.
MACRO_DEPS = {"py_pytest": ["//tests:conftest"]}


def load_build(pkg):
  """{target name: (rule kind, [src paths relative to REPO], [dep labels])} of one package."""
  targets = {}

  def rule(kind):
    def record(name, srcs=(), deps=(), module=None, **_):
      srcs = [s if s.startswith("//") else f"{pkg}/{s}" for s in srcs]
      if module:  # py_module_binary runs `module`: it imports it.
        srcs.append("//" + module.replace(".", "/") + ".py")
      deps = [_absolute(pkg, d) for d in list(deps) + MACRO_DEPS.get(kind, [])]
      targets[name] = (kind, [s for s in srcs if s.endswith(".py")], deps)
    return record

  def glob(include, exclude=()):
    out = set()
    for pattern in include:
      out.update(os.path.relpath(p, os.path.join(REPO, pkg))
                 for p in glob_lib.glob(os.path.join(REPO, pkg, pattern), recursive=True))
    return sorted(out - set(glob(exclude) if exclude else ()))

  ignore = lambda *a, **k: None
  env = {"load": ignore, "package": ignore, "exports_files": ignore, "filegroup": ignore,
         "glob": glob, "select": lambda d: [], "test_suite": ignore, "sh_test": ignore,
         "py_library": rule("py_library"), "py_binary": rule("py_binary"),
         "py_test": rule("py_test"), "py_pytest": rule("py_pytest"),
         "py_module_binary": rule("py_module_binary")}
  path = os.path.join(REPO, pkg, "BUILD")
  if os.path.exists(path):
    with open(path) as f:
      exec(compile(f.read(), path, "exec"), env)
  return targets


def _absolute(pkg, label):
  if label.startswith(":"):
    return f"//{pkg}{label}"
  if label.startswith("//") and ":" not in label:
    return f"{label}:{label.rsplit('/', 1)[-1]}"
  return label


def repo_imports(path):
  """Repository module paths (e.g. 'pipeline/features.py') that a source file imports."""
  with open(os.path.join(REPO, path)) as f:
    tree = ast.parse(f.read(), path)
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names.add(node.module)
      names.update(f"{node.module}.{a.name}" for a in node.names)
  out = set()
  for name in names:
    if name.split(".")[0] in PACKAGES:
      module = name.replace(".", "/") + ".py"
      if os.path.exists(os.path.join(REPO, module)):
        out.add(module)
  return out


def main():
  targets = {}
  for pkg in sorted({os.path.dirname(p) for p in glob_lib.glob(
      os.path.join(REPO, "*", "**", "*.py"), recursive=True)}):
    pkg = os.path.relpath(pkg, REPO)
    if pkg.split("/")[0] not in PACKAGES:
      continue
    for name, t in load_build(pkg).items():
      targets[f"//{pkg}:{name}"] = t
  owner = {}
  for label, (kind, srcs, _) in sorted(targets.items()):
    for src in srcs:
      if kind == "py_library" and not src.endswith("__init__.py"):
        owner.setdefault(src, label)
  problems = []
  for label, (kind, srcs, deps) in sorted(targets.items()):
    needed = set()
    for src in srcs:
      if src.startswith("//"):
        if src[2:] in owner:
          needed.add(owner[src[2:]])
        continue
      for module in repo_imports(src):
        if module in srcs:
          continue
        if module not in owner:
          problems.append(f"{label}: imports {module}, which no py_library has in srcs")
        else:
          needed.add(owner[module])
    for dep in sorted(needed - set(deps)):
      problems.append(f"{label}: add {dep} to deps (its srcs import it)")
    macro = set(MACRO_DEPS.get(kind, []))
    for dep in sorted(set(deps) - needed - macro):
      if dep in targets and targets[dep][0] == "py_library":
        problems.append(f"{label}: remove {dep} from deps (nothing in srcs imports it)")
  covered = {s for _, srcs, _ in targets.values() for s in srcs}
  for path in sorted(glob_lib.glob(os.path.join(REPO, "*", "**", "*.py"), recursive=True)):
    rel = os.path.relpath(path, REPO)
    if rel.split("/")[0] in PACKAGES and rel not in covered and not rel.endswith("__init__.py"):
      what = "py_pytest" if rel.endswith("_test.py") else "py_library/py_binary"
      problems.append(f"{rel}: no Bazel target has it in srcs (add a {what}, docs/bazel.md)")
  for p in problems:
    print(p)
  print(f"check_build_deps: {len(targets)} targets, {len(problems)} problems", file=sys.stderr)
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main())
