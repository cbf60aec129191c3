"""Which tf.distribute strategy to train with, and who in a cluster is the chief.

  auto          MirroredStrategy over all GPUs if there are any; else, with cpu_replicas > 1,
                MirroredStrategy over that many logical CPUs; else OneDeviceStrategy.
  one_device    OneDeviceStrategy on the first GPU, or the CPU.
  mirrored      MirroredStrategy over all GPUs, or over `cpu_replicas` logical CPUs.
  multi_worker  MultiWorkerMirroredStrategy; the cluster comes from the TF_CONFIG variable.

Splitting the CPU into logical devices lets the mirrored code path (per-replica batches,
cross-replica reductions) run on a machine without accelerators. It must happen before
TensorFlow initializes its devices, i.e. before any op runs, so `make_strategy` is the first
TensorFlow call of the trainer.
"""

import json
import os
import subprocess
import sys

import tensorflow as tf

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
# What a multi-worker step raises when another worker is lost: Unavailable once the
# coordination service misses its heartbeats (about 10 s here), DeadlineExceeded when a
# collective outlives --worker_timeout, Aborted for collectives cut short by either.
LOST_WORKER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                      tf.errors.AbortedError)


class StrategyError(ValueError):
  """The requested strategy cannot be built here (bad TF_CONFIG, devices already set up...)."""


def split_cpu(num_devices):
  """Splits the physical CPU into `num_devices` logical CPU devices."""
  cpu = tf.config.list_physical_devices("CPU")[0]
  existing = tf.config.get_logical_device_configuration(cpu)
  if existing is not None and len(existing) == num_devices:
    return  # Already done (e.g. a second make_strategy in the same process).
  try:
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices)
  except RuntimeError as e:
    raise StrategyError(
        f"--cpu_replicas={num_devices}: TensorFlow's devices are already initialized in this "
        f"process, so the CPU can no longer be split ({e}); split it before any op runs"
    ) from None


def parse_tf_config(text):
  """Validates a TF_CONFIG value and returns it as a dict; names the problem if it is bad."""
  if not text:
    raise StrategyError(
        "--strategy=multi_worker needs the TF_CONFIG environment variable, e.g. "
        '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
        '"task": {"type": "worker", "index": 0}}; it is not set')
  try:
    config = json.loads(text)
  except json.JSONDecodeError as e:
    raise StrategyError(f"TF_CONFIG is not valid JSON ({e}): {text!r}") from None
  if not isinstance(config, dict):
    raise StrategyError(f"TF_CONFIG must be a JSON object, got {text!r}")
  cluster = config.get("cluster")
  if not isinstance(cluster, dict) or not cluster:
    raise StrategyError(f"TF_CONFIG has no 'cluster' object (host lists by job): {text!r}")
  for job, hosts in cluster.items():
    if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) for h in hosts):
      raise StrategyError(f"TF_CONFIG cluster job {job!r} must be a non-empty list of "
                          f"'host:port' strings, got {hosts!r}")
  if not set(cluster) & {"worker", "chief"}:
    raise StrategyError(f"TF_CONFIG cluster needs a 'worker' (or 'chief') job, has "
                        f"{sorted(cluster)}")
  task = config.get("task")
  if not isinstance(task, dict) or "type" not in task or "index" not in task:
    raise StrategyError(f"TF_CONFIG has no 'task' with 'type' and 'index' (which member of "
                        f"the cluster this process is): {text!r}")
  task_type, index = task["type"], task["index"]
  if task_type not in cluster:
    raise StrategyError(f"TF_CONFIG task type {task_type!r} is not a job of the cluster "
                        f"{sorted(cluster)}")
  if not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
    raise StrategyError(f"TF_CONFIG task index {index!r} is out of range: job "
                        f"{task_type!r} has {len(cluster[task_type])} hosts")
  return config


def _gpus():
  return tf.config.list_physical_devices("GPU")


def _cpu_devices(cpu_replicas):
  split_cpu(cpu_replicas)
  return [f"/cpu:{i}" for i in range(cpu_replicas)]


# Run as `python -c`: waits `timeout` seconds for its stdin to close (the trainer closes it once
# connected, or dies), else prints the message and SIGKILLs the trainer.
_WATCHDOG = """
import os, select, signal, sys
parent, timeout, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
ready, _, _ = select.select([sys.stdin], [], [], timeout)
if not ready:
  sys.stderr.write(message + "\\n")
  sys.stderr.flush()
  os.kill(parent, signal.SIGKILL)
"""


def _connect_multi_worker(tf_config, timeout_seconds):
  """MultiWorkerMirroredStrategy, once every worker of the cluster has connected.

  Building the strategy blocks until all workers have registered with the coordination
  service, with no time limit of its own (seen here: a lone worker waited for its peer as
  long as it was left running), and it holds the GIL meanwhile, so no Python thread or signal
  handler can step in. A watchdog process prints why and kills this one after
  `timeout_seconds` instead. Every collective then gets the same timeout
  (CommunicationOptions), so that a worker lost later fails the all-reduce with an error
  instead of waiting forever.
  """
  hosts = [h for job in ("chief", "worker") for h in tf_config["cluster"].get(job, [])]
  task = tf_config["task"]
  watchdog = None
  if timeout_seconds:
    message = (
        f"trainer.main: error: {task['type']} {task['index']} could not reach the other "
        f"workers of TF_CONFIG's cluster {hosts} within --worker_timeout={timeout_seconds} s; "
        "start every worker with the same cluster (each with its own task index) and check "
        "that their host:port addresses are reachable from here. Stopping this worker.")
    watchdog = subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(timeout_seconds), message],
        stdin=subprocess.PIPE)
  try:
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=float(timeout_seconds) if timeout_seconds else None)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
  except tf.errors.OpError as e:  # e.g. "Could not start gRPC server": the port is taken
    own = tf_config["cluster"][task["type"]][task["index"]]
    raise StrategyError(
        f"{task['type']} {task['index']} could not start its server at {own} or join the "
        f"cluster {hosts}: {e.message.strip()} (is another process using that port?)"
    ) from None
  finally:
    if watchdog is not None:
      watchdog.stdin.close()  # connected (or failed otherwise): the watchdog exits
      watchdog.wait()


def make_strategy(name, cpu_replicas=1, *, worker_timeout=0):
  """Builds the tf.distribute strategy `name` (one of STRATEGIES).

  `worker_timeout` (seconds, 0 = none) applies to multi_worker: how long to wait for the
  other workers to connect, and for each collective.
  """
  if name not in STRATEGIES:
    raise StrategyError(f"--strategy={name}: unknown; choose one of {', '.join(STRATEGIES)}")
  if cpu_replicas < 1:
    raise StrategyError(f"--cpu_replicas={cpu_replicas}: must be at least 1")
  if name == "multi_worker":
    if cpu_replicas > 1:
      raise StrategyError(
          f"--cpu_replicas={cpu_replicas} does not apply to --strategy=multi_worker (each "
          "worker process is one CPU replica); use one worker process per replica instead")
    tf_config = parse_tf_config(os.environ.get("TF_CONFIG", ""))
    return _connect_multi_worker(tf_config, worker_timeout)
  gpus = _gpus()
  if name == "one_device":
    return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
  if name == "mirrored" or (name == "auto" and (gpus or cpu_replicas > 1)):
    if gpus:
      return tf.distribute.MirroredStrategy()  # All visible GPUs.
    return tf.distribute.MirroredStrategy(_cpu_devices(cpu_replicas))
  return tf.distribute.OneDeviceStrategy("/cpu:0")


def _task(strategy):
  """(task_type, task_id) of this process, or (None, None) outside a multi-worker cluster."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.cluster_spec().as_dict():
    return None, None
  return resolver.task_type, resolver.task_id


def is_chief(strategy):
  """True in the process that writes the run's files (the only one outside a cluster).

  The chief is the 'chief' task if the cluster has one, else worker 0 (TensorFlow's rule).
  """
  task_type, task_id = _task(strategy)
  if task_type is None:
    return True
  if task_type == "chief":
    return True
  has_chief = "chief" in strategy.cluster_resolver.cluster_spec().as_dict()
  return task_type == "worker" and task_id == 0 and not has_chief


def worker_index(strategy):
  """This process's task index within its job (0 outside a cluster)."""
  _, task_id = _task(strategy)
  return task_id or 0


def num_workers(strategy):
  """Worker processes training together (each with its own input pipeline); 1 outside a
  cluster."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None:
    return 1
  cluster = resolver.cluster_spec().as_dict()
  return sum(len(cluster.get(job, ())) for job in ("chief", "worker")) or 1


def _host(address):
  host = address.rsplit(":", 1)[0].strip("[]").lower()
  return "127.0.0.1" if host in ("localhost", "::1", "127.0.0.1") else host


def workers_on_host(cluster, task_type, task_id):
  """Worker processes of `cluster` ({job: ["host:port", ...]}) on the host of task
  (task_type, task_id), itself included; localhost, 127.0.0.1 and ::1 are one host."""
  own = _host(cluster[task_type][task_id])
  return sum(_host(a) == own for job in ("chief", "worker") for a in cluster.get(job, ())) or 1


def workers_on_this_host(strategy):
  """Worker processes of the cluster on this process's host (by TF_CONFIG's addresses), 1
  outside a cluster: they share this host's memory."""
  task_type, task_id = _task(strategy)
  if task_type is None:
    return 1
  return workers_on_host(strategy.cluster_resolver.cluster_spec().as_dict(), task_type,
                         task_id)


def name_of(strategy):
  """The --strategy value that builds this kind of strategy (auto resolves to one of them).

  Class names mislead here: MultiWorkerMirroredStrategy's class is
  CollectiveAllReduceStrategy.
  """
  if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return "multi_worker"
  if isinstance(strategy, tf.distribute.MirroredStrategy):
    return "mirrored"
  if isinstance(strategy, tf.distribute.OneDeviceStrategy):
    return "one_device"
  return type(strategy).__name__
