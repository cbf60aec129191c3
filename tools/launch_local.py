"""Runs a MultiWorkerMirroredStrategy job as N worker processes on this machine.

    python -m tools.launch_local --workers=2 -- --data_dir=DATA --model_dir=RUN [trainer flags]

Picks N free ports on 127.0.0.1, gives each worker its own TF_CONFIG (worker 0 is the chief),
starts `python -m trainer.main --strategy=multi_worker <trainer flags>` once per worker, and
prints every output line of worker N as `[worker N] line`. Its own lines start with
`[launch]`, among them `[launch] worker N pid P` for each worker (a test or an operator can
kill one to rehearse a preemption).

If a worker fails (non-zero exit, or killed), the others cannot go on (every step all-reduces
over all of them): the launcher stops them (SIGTERM, then SIGKILL after --grace_seconds) and
exits 1. SIGINT and SIGTERM to the launcher are forwarded to every worker. Rerunning the same
command resumes from the last checkpoint in --model_dir (trainer/checkpoints.py).

This is a stand-in for a cluster manager on one machine. On several machines, start
`python -m trainer.main --strategy=multi_worker ...` on each with its own TF_CONFIG
(docs/distributed.md).
"""

import ctypes
import json
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import flags

from tools import cli

HOST = "127.0.0.1"
PREFIX = "[launch]"


def free_ports(count, host=HOST):
  """`count` distinct ports that were free a moment ago (all held open until all are known,
  so that no two are the same)."""
  sockets = []
  try:
    for _ in range(count):
      s = socket.socket()
      s.bind((host, 0))
      sockets.append(s)
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


def tf_config(hosts, index):
  """The TF_CONFIG value of worker `index` in a cluster of `hosts` ("host:port" strings)."""
  return json.dumps({"cluster": {"worker": list(hosts)},
                     "task": {"type": "worker", "index": index}})


def trainer_command(trainer_args, python=sys.executable):
  for arg in trainer_args:
    if arg.startswith("--strategy=") and arg != "--strategy=multi_worker":
      raise ValueError(f"{arg}: the launcher runs --strategy=multi_worker workers; leave "
                       "--strategy out")
  return [python, "-m", "trainer.main", "--strategy=multi_worker", *trainer_args]


def _die_with_parent_hook():
  """A preexec_fn giving the worker SIGKILL when the launcher dies, even by SIGKILL, so that no
  worker is left waiting for its peers (Linux prctl PR_SET_PDEATHSIG = 1); None elsewhere.

  libc is loaded here, in the launcher: the hook runs between fork and exec, where only
  simple calls are safe while other threads (the log streams) exist."""
  if not sys.platform.startswith("linux"):
    return None
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
  except (OSError, AttributeError):
    return None
  return lambda: prctl(1, signal.SIGKILL.value)


def start_worker(index, hosts, trainer_args, *, env=None, cwd=None):
  """Starts worker `index` as a subprocess (stdout and stderr merged, one pipe); a Popen. It
  starts in `cwd` (default: the launcher's directory, so relative paths mean what the user
  typed) and imports trainer from the repository root wherever that is."""
  full_env = cli.trainer_env() if env is None else dict(env)
  full_env["TF_CONFIG"] = tf_config(hosts, index)
  full_env.setdefault("PYTHONUNBUFFERED", "1")
  return subprocess.Popen(
      trainer_command(trainer_args), env=full_env, cwd=cwd, stdin=subprocess.DEVNULL,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
      preexec_fn=_die_with_parent_hook())


class _Printer:
  """Writes whole lines from several threads without interleaving them."""

  def __init__(self, out):
    self.out = out
    self.lock = threading.Lock()

  def line(self, text):
    with self.lock:
      self.out.write(text if text.endswith("\n") else text + "\n")
      self.out.flush()


def _stream(process, prefix, printer):
  for line in process.stdout:
    printer.line(f"{prefix} {line}")
  process.stdout.close()


def _describe(returncode):
  if returncode < 0:
    try:
      return f"was killed by {signal.Signals(-returncode).name}"
    except ValueError:
      return f"was killed by signal {-returncode}"
  return f"exited with code {returncode}"


def stop(processes, grace_seconds, sig=signal.SIGTERM):
  """Sends `sig` to every running process, then SIGKILL to those still running after
  `grace_seconds`."""
  for p in processes:
    if p.poll() is None:
      p.send_signal(sig)
  deadline = time.monotonic() + grace_seconds
  for p in processes:
    try:
      p.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()


def run(num_workers, trainer_args, *, grace_seconds=10.0, out=None, cwd=None):
  """Runs the job to the end; returns 0 if every worker succeeded, else 1."""
  printer = _Printer(out or sys.stdout)
  hosts = [f"{HOST}:{port}" for port in free_ports(num_workers)]
  printer.line(f"{PREFIX} cluster {hosts}: {' '.join(trainer_command(trainer_args))}")
  workers, streams = [], []
  received = []  # signals forwarded to the workers

  def forward(signum, _frame):
    # No printing here: the handler may run while this thread holds the printer's lock.
    received.append(signum)
    for p in workers:
      if p.poll() is None:
        p.send_signal(signum)

  previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
  failed = None
  try:
    for index in range(num_workers):
      process = start_worker(index, hosts, trainer_args, cwd=cwd)
      workers.append(process)
      printer.line(f"{PREFIX} worker {index} pid {process.pid}")
      thread = threading.Thread(target=_stream, args=(process, f"[worker {index}]", printer),
                                daemon=True)
      thread.start()
      streams.append(thread)
    started, reported = time.monotonic(), set()

    def report_exits():
      for i, p in enumerate(workers):
        if p.poll() is not None and i not in reported:
          reported.add(i)
          printer.line(f"{PREFIX} worker {i} {_describe(p.returncode)} after "
                       f"{time.monotonic() - started:.1f} s")

    while any(p.poll() is None for p in workers):
      report_exits()
      failed = next((i for i, p in enumerate(workers) if p.poll() not in (None, 0)), None)
      if failed is not None or received:
        break
      time.sleep(0.1)
    report_exits()
    if failed is None:
      failed = next((i for i, p in enumerate(workers) if p.poll() not in (None, 0)), None)
    if received:
      name = signal.Signals(received[-1]).name
      printer.line(f"{PREFIX} {name}: forwarded to every worker; SIGKILL to those still "
                   f"running after {grace_seconds:g} s")
      stop(workers, grace_seconds, sig=received[-1])
    elif failed is not None:
      printer.line(f"{PREFIX} worker {failed} {_describe(workers[failed].returncode)}; "
                   "stopping the other workers (they cannot continue without it)")
      stop(workers, grace_seconds)
  finally:
    stop(workers, grace_seconds)
    for s, handler in previous.items():
      signal.signal(s, handler)
    for thread in streams:
      thread.join(timeout=5)
  codes = [p.returncode for p in workers]
  printer.line(f"{PREFIX} exit codes {codes}")
  return 0 if failed is None and not received and all(c == 0 for c in codes) else 1


def define_flags(flag_values):
  fv = {"flag_values": flag_values}
  flags.DEFINE_integer("workers", 2, "Worker processes to start.", lower_bound=1, **fv)
  flags.DEFINE_float("grace_seconds", 10.0, "After a failure or a signal, how long workers get "
                     "to exit before SIGKILL.", lower_bound=0, **fv)


def main(argv, flag_values):
  """argv[1:]: the flags for python -m trainer.main, after --."""
  trainer_args = argv[1:]
  try:
    trainer_command(trainer_args)
  except ValueError as e:
    raise cli.ToolError(e) from None
  return run(flag_values.workers, trainer_args, grace_seconds=flag_values.grace_seconds)


COMMAND = cli.Command("tools.launch_local", define_flags, main)

if __name__ == "__main__":
  COMMAND.run()
