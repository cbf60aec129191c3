"""Memory cgroups for tests: tools/cgroups.py (tools.bench_memory runs its children in them
too), under the name the tests import."""

from tools.cgroups import MemoryCgroup, memory_cgroup, skip_reason  # pylint: disable=unused-import
