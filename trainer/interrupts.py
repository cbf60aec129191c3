"""SIGINT and SIGTERM (Ctrl-C; a preemptible VM's notice) as a request to stop after the step.

Python runs a signal handler only when the main thread returns to the interpreter, and the
trainer's main thread spends its time inside one tf.function call of 20 steps (or minutes of
tracing or a checkpoint write): a handler alone would wait for all of it, and Ctrl-C used to
take 18 s. Here the signal's C-level handler writes its number to a socket
(`signal.set_wakeup_fd`), a thread waiting on that socket sets `flag` (a host tf.Variable) at
once, and the train step reads the flag after every step: the call returns after the step
that is running (trainer/steps.py; the flag is all-reduced, so every replica and worker stops
at the same step). The training loop then stops with Interrupted (trainer/train.py), which
trainer/main.py turns into one line and exit status 128 + the signal (130, 143).

A second signal while stopping exits at once, status 128 + the signal, without waiting.
"""

import os
import signal
import socket
import sys
import threading

import tensorflow as tf

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
  """The run stopped at a signal; the message says what was kept and how to resume."""

  def __init__(self, signum, message):
    super().__init__(message)
    self.signum = signum

  @property
  def exit_status(self):
    """128 + the signal (130 for SIGINT, 143 for SIGTERM); 1 on a worker that another
    worker's signal stopped."""
    return 1 if self.signum is None else 128 + self.signum


def _say(line):
  """One line on stderr in one write: the watcher thread calls this while the main thread
  may be logging or exiting, and print's separate write of the newline let the main thread's
  last line land between the two (seen in CI: both on one line)."""
  sys.stderr.write(line + "\n")
  sys.stderr.flush()


def interrupted(stop, model_dir, epochs_done, step, steps):
  """The Interrupted of a run that `stop` ended after `step` of `steps` of epoch
  epochs_done + 1: that epoch is abandoned, the last checkpoint (epoch epochs_done) kept."""
  where = f"in epoch {epochs_done + 1}, after step {step} of {steps}"
  if epochs_done:
    kept = (f"that epoch is abandoned and the checkpoint of epoch {epochs_done} kept; rerun "
            f"the same command to resume from epoch {epochs_done} (--model_dir={model_dir})")
  else:
    kept = "no epoch had finished, so nothing was saved; the same command starts over"
  if stop.signum is None:  # another worker's signal stopped the all-reduced step
    return Interrupted(None, f"stopped with the other workers {where} (a signal reached "
                       f"another worker): {kept}")
  return Interrupted(stop.signum, f"{signal.Signals(stop.signum).name} {where}: {kept}")


class StopRequest:
  """The flag the train step reads, and the signal that set it (None until one came)."""

  def __init__(self):
    self.flag = tf.Variable(False, trainable=False, name="stop_requested")
    self.signum = None
    self._installed = None

  @property
  def requested(self):
    return self.signum is not None

  def request(self, signum):
    """What a signal does (also callable directly): the next step boundary stops the run."""
    if self.signum is None:
      self.signum = signum
      self.flag.assign(True)
      _say(f"trainer: {signal.Signals(signum).name}: stopping at the next train step "
           "(send it again to exit at once)")
    else:
      _say(f"trainer: {signal.Signals(signum).name} again: exiting now")
      os._exit(128 + signum)  # pylint: disable=protected-access (no cleanup: at once)

  def install(self):
    """Catches SIGINT and SIGTERM from now on (main thread only); returns self."""
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    # The Python-level handler only keeps Python from raising KeyboardInterrupt (or dying on
    # SIGTERM); the wakeup socket has already told the watcher.
    previous = {s: signal.signal(s, lambda signum, frame: None) for s in SIGNALS}

    def watch():
      while True:
        try:
          data = reader.recv(64)
        except OSError:
          return
        if not data:
          return
        for signum in data:
          if signum in SIGNALS:
            self.request(signum)

    thread = threading.Thread(target=watch, name="stop-request", daemon=True)
    thread.start()
    self._installed = (reader, writer, previous_fd, previous)
    return self

  def uninstall(self):
    """Restores the previous handlers (main thread only)."""
    if self._installed is None:
      return
    reader, writer, previous_fd, previous = self._installed
    signal.set_wakeup_fd(previous_fd)
    for s, handler in previous.items():
      signal.signal(s, handler)
    writer.close()
    reader.close()
    self._installed = None
