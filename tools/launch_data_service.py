"""Starts a tf.data service (a dispatcher and worker processes) for `trainer.main --data_service`.

    python -m tools.launch_data_service --workers=2                  # both here (one VM, tests)
    python -m tools.launch_data_service --role=dispatcher --port=5050 --host=$(hostname)
    python -m tools.launch_data_service --role=workers --workers=4 \\
        --dispatcher=DISPATCHER_HOST:5050 --worker_host=$(hostname)   # on each input VM

The dispatcher runs in this process; each worker is a process of its own (`--role=worker`,
what the launcher starts), so that a worker can be killed alone, as a machine is lost. Lines
of its own start with `[data_service]`; once the dispatcher and every worker are up it prints

    [data_service] ready: --data_service=grpc://HOST:PORT

(the flag to give the trainer) and serves until SIGINT or SIGTERM, which stop the workers
(SIGTERM, then SIGKILL after --grace_seconds) and the dispatcher, and exit 0. A worker that
dies is reported; the others go on serving (the dispatcher deals its files to them). When
every worker started here has died, the launcher stops with exit status 1.

Workers read the training data themselves (the shard files named in the job the trainer
sends), so every worker machine needs the data directory's path to work there: a gs:// path,
or a disk mounted at the same path. They run the input pipeline with this repository's
TensorFlow; the trainer's code is not needed on them (the job is a dataset graph).
"""

import os
import signal
import subprocess
import sys
import threading
import time

from absl import flags

from tools import cli
from tools import launch_local

PREFIX = "[data_service]"
WORKER_READY = "data service worker serving"
ROLES = ("local", "dispatcher", "workers", "worker")


def _tensorflow():
  # Without TensorFlow's C++ INFO lines (each server logs its whole config) and start-up
  # notices, unless --verbosity=1 asks for them (pipeline/logs.py).
  from pipeline import logs  # pylint: disable=g-import-not-at-top
  return logs.import_tensorflow(logs.verbose_in_argv(sys.argv))


def start_dispatcher(port, *, work_dir="", worker_timeout_seconds=10.0):
  """A DispatchServer on `port` (0: a free one), in this process; returns (server, port)."""
  tf = _tensorflow()
  service = tf.data.experimental.service
  config = service.DispatcherConfig(
      port=port, work_dir=work_dir or None, fault_tolerant_mode=bool(work_dir),
      worker_timeout_ms=int(worker_timeout_seconds * 1000))
  server = service.DispatchServer(config)
  return server, int(server.target.rsplit(":", 1)[1])


def serve_worker(dispatcher, worker_host, heartbeat_seconds):
  """Runs one tf.data service worker in this process until it is killed."""
  tf = _tensorflow()
  service = tf.data.experimental.service
  server = service.WorkerServer(service.WorkerConfig(
      dispatcher_address=dispatcher, worker_address=f"{worker_host}:%port%",
      heartbeat_interval_ms=int(heartbeat_seconds * 1000)))
  print(f"{WORKER_READY} for dispatcher {dispatcher}", flush=True)
  server.join()


def start_worker(index, dispatcher, worker_host, heartbeat_seconds):
  """Starts worker `index` as a `--role=worker` subprocess (stdout and stderr on one pipe)."""
  env = cli.trainer_env({"PYTHONUNBUFFERED": "1"})
  command = [sys.executable, "-m", "tools.launch_data_service", "--role=worker",
             f"--dispatcher={dispatcher}", f"--worker_host={worker_host}",
             f"--heartbeat_seconds={heartbeat_seconds:g}"]
  return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1,
                          # Killed with the launcher, even by SIGKILL: no orphan workers.
                          preexec_fn=launch_local._die_with_parent_hook())  # pylint: disable=protected-access


def _stream(process, prefix, printer, ready):
  for line in process.stdout:
    if WORKER_READY in line:
      ready.set()
    printer.line(f"{prefix} {line}")
  process.stdout.close()


def run(role, *, num_workers=2, port=0, host="localhost", dispatcher="", worker_host="localhost",
        heartbeat_seconds=1.0, worker_timeout_seconds=10.0, work_dir="", grace_seconds=10.0,
        start_timeout=120.0, out=None):
  """Runs the service until a signal (returns 0) or until every worker here died (1)."""
  printer = launch_local._Printer(out or sys.stdout)  # pylint: disable=protected-access
  received = []
  previous = {s: signal.signal(s, lambda signum, _frame: received.append(signum))
              for s in (signal.SIGINT, signal.SIGTERM)}
  workers, streams, server = [], [], None
  try:
    if role in ("local", "dispatcher"):
      server, port = start_dispatcher(port, work_dir=work_dir,
                                      worker_timeout_seconds=worker_timeout_seconds)
      dispatcher = f"{host}:{port}"
      printer.line(f"{PREFIX} dispatcher grpc://{dispatcher} (pid {os.getpid()}"
                   + (f", journal in {work_dir}" if work_dir else "") + ")")
    if role in ("local", "workers"):
      readies = []
      for index in range(num_workers):
        process = start_worker(index, dispatcher, worker_host, heartbeat_seconds)
        workers.append(process)
        ready = threading.Event()
        readies.append(ready)
        printer.line(f"{PREFIX} worker {index} pid {process.pid}")
        thread = threading.Thread(target=_stream, daemon=True,
                                  args=(process, f"[worker {index}]", printer, ready))
        thread.start()
        streams.append(thread)
      deadline = time.monotonic() + start_timeout
      for index, (process, ready) in enumerate(zip(workers, readies)):
        while not ready.wait(0.1):
          if received:
            break
          if process.poll() is not None or time.monotonic() > deadline:
            why = (launch_local._describe(process.returncode) if process.poll() is not None  # pylint: disable=protected-access
                   else f"did not start within {start_timeout:g} s")
            printer.line(f"{PREFIX} worker {index} {why}; stopping")
            return 1
    if not received:
      printer.line(f"{PREFIX} ready: --data_service=grpc://{dispatcher}"
                   + (f" ({num_workers} worker(s) here)" if workers else ""))
    reported = set()
    while not received:
      for index, process in enumerate(workers):
        if process.poll() is not None and index not in reported:
          reported.add(index)
          alive = sum(p.poll() is None for p in workers)
          printer.line(f"{PREFIX} worker {index} {launch_local._describe(process.returncode)}; "  # pylint: disable=protected-access
                       f"{alive} of {len(workers)} still serve")
      if workers and len(reported) == len(workers):
        printer.line(f"{PREFIX} every worker started here has stopped; stopping")
        return 1
      time.sleep(0.2)
    name = signal.Signals(received[-1]).name
    printer.line(f"{PREFIX} {name}: stopping {len(workers)} worker(s)"
                 + (" and the dispatcher" if server is not None else ""))
    return 0
  finally:
    launch_local.stop(workers, grace_seconds)
    for thread in streams:
      thread.join(timeout=5)
    for s, handler in previous.items():
      signal.signal(s, handler)


def define_flags(flag_values):
  fv = {"flag_values": flag_values}
  flags.DEFINE_enum("role", "local", ROLES, "local: a dispatcher in this process and --workers "
                    "worker processes; dispatcher: only the dispatcher (for workers on other "
                    "machines); workers: only --workers worker processes, for --dispatcher; "
                    "worker: one worker in this process (what the others start).", **fv)
  flags.DEFINE_integer("workers", 2, "Worker processes to start on this machine.",
                       lower_bound=1, **fv)
  flags.DEFINE_integer("port", 0, "The dispatcher's port; 0 picks a free one.", lower_bound=0,
                       **fv)
  flags.DEFINE_string("host", "localhost", "The dispatcher's host name as trainers and "
                      "workers reach it (the printed address).", **fv)
  flags.DEFINE_string("dispatcher", "", "--role=workers/worker: the dispatcher's HOST:PORT.",
                      **fv)
  flags.DEFINE_string("worker_host", "localhost", "The host name each worker gives the "
                      "dispatcher, by which trainers reach it: this machine's name when "
                      "trainers run elsewhere.", **fv)
  flags.DEFINE_float("heartbeat_seconds", 1.0, "How often a worker reports to the dispatcher.",
                     lower_bound=0.1, **fv)
  flags.DEFINE_float("worker_timeout_seconds", 10.0, "The dispatcher counts a worker lost "
                     "after this long without a heartbeat and deals its files to the others.",
                     lower_bound=1, **fv)
  flags.DEFINE_string("work_dir", "", "The dispatcher's journal directory: with one, a "
                      "restarted dispatcher recovers its jobs (fault-tolerant mode).", **fv)
  flags.DEFINE_float("grace_seconds", 10.0, "On SIGINT/SIGTERM, how long workers get to exit "
                     "before SIGKILL.", lower_bound=0, **fv)


def main(argv, flag_values):
  if len(argv) > 1:
    raise cli.ToolError(f"unexpected arguments: {' '.join(argv[1:])}")
  f = flag_values
  if f.role in ("workers", "worker"):
    if not f.dispatcher:
      raise cli.ToolError(f"--role={f.role} needs --dispatcher=HOST:PORT (the address "
                          "--role=dispatcher printed, without grpc://)")
  elif f.dispatcher:
    raise cli.ToolError(f"--dispatcher is for --role=workers; --role={f.role} starts its own")
  dispatcher = f.dispatcher.removeprefix("grpc://")
  if f.role == "worker":
    serve_worker(dispatcher, f.worker_host, f.heartbeat_seconds)
    return 0
  return run(f.role, num_workers=f.workers, port=f.port, host=f.host, dispatcher=dispatcher,
             worker_host=f.worker_host, heartbeat_seconds=f.heartbeat_seconds,
             worker_timeout_seconds=f.worker_timeout_seconds, work_dir=f.work_dir,
             grace_seconds=f.grace_seconds)


COMMAND = cli.Command("tools.launch_data_service", define_flags, main)

if __name__ == "__main__":
  COMMAND.run()
