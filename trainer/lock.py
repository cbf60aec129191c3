"""One run per model_dir: `<model_dir>/run.lock`, held while a trainer runs there.

Two trainers on one --model_dir would interleave their checkpoints, history rows and best
weights and both report success. The first takes the lock; the second fails at once with one
line naming the owner (host, pid, start time, command). In a multi-worker cluster only the
chief takes it, once for the whole cluster (the other workers write only into their own
`.worker<N>/` directories).

The lock file is JSON: {"host", "pid", "pid_start", "started", "command"}. It is created
whole and only if absent:
  * local paths: written to a temporary file, then hard-linked to run.lock (link(2) fails if
    the name exists, atomically), under an flock(2) of the model_dir itself, so that two
    processes breaking one stale lock at once cannot both win;
  * gs://: uploaded through gcsfs with the precondition ifGenerationMatch=0 (the object must
    not exist), which GCS checks atomically; a stale object is deleted with
    ifGenerationMatch=<the generation that was read>, so that only that very object goes.
    (tf.io.gfile has no preconditions, so gs:// locking needs gcsfs, a dependency of the
    Beam job's [gcp] extra; without it the run says so and runs unlocked.)

While it runs, the owner refreshes the lock's modification time every HEARTBEAT_S (a daemon
thread). A lock is stale, and taken over with a warning,
  * when its host is this host and its process is gone (or the pid now belongs to a process
    started at another time): a run killed with SIGKILL, rerun on the same machine;
  * on any host, when its heartbeat is older than STALE_AFTER_S: a chief restarted by a
    cluster manager on another machine takes over once the lost one's heartbeat has expired
    (until then it fails with the owner's line, and the restart is retried, or the file
    deleted by hand).

This module imports no TensorFlow.
"""

import datetime
import fcntl
import json
import os
import socket
import sys
import tempfile
import threading
import time

from absl import logging

LOCK_FILE = "run.lock"
HEARTBEAT_S = 60  # how often a running owner refreshes its lock's modification time
STALE_AFTER_S = 600  # a lock not refreshed for this long is stale, whatever its host


class LockError(RuntimeError):
  """model_dir is locked by another run; the message names it."""


def _pid_start(pid):
  """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), or None
  where /proc cannot tell. With the pid it names one process, even after pid reuse."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
  except OSError:
    return None
  return None if fields[0] == "Z" else int(fields[19])  # a zombie has finished running


def _alive(pid, pid_start):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # another user's process: it exists
  if os.path.exists("/proc/self/stat"):
    now = _pid_start(pid)
    return now is not None and (pid_start is None or now == pid_start)
  return True


def owner_record():
  """This process as a lock owner."""
  return {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _pid_start(os.getpid()),
          "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "command": " ".join(sys.argv)}


def describe(owner):
  return (f"pid {owner.get('pid')} on {owner.get('host')}, started {owner.get('started')}: "
          f"{owner.get('command')}")


def stale_reason(owner, age_s):
  """Why the lock of `owner`, last refreshed `age_s` seconds ago (None: unknown), is stale, or
  None if it may still be held."""
  if age_s is not None and age_s > STALE_AFTER_S:
    return f"its last heartbeat was {age_s:.0f} s ago (stale after {STALE_AFTER_S} s)"
  if owner.get("host") != socket.gethostname():
    return None  # another machine: its processes cannot be seen from here
  pid = owner.get("pid")
  if not isinstance(pid, int):
    return None
  if not _alive(pid, owner.get("pid_start")):
    return f"its process {pid} on this host is gone"
  return None


class Lock:
  """A held lock; `release()` (or leaving a `with` block) removes it if it is still ours."""

  def __init__(self, path, owner, store, heartbeat_s=HEARTBEAT_S):
    self.path, self.owner, self._store = path, owner, store
    self.heartbeat_s = heartbeat_s
    self._stop = threading.Event()
    if store is not None:
      self._heart = threading.Thread(target=self._beat, name="run.lock heartbeat", daemon=True)
      self._heart.start()

  def _beat(self):
    while not self._stop.wait(self.heartbeat_s):
      try:
        self._store.touch()
      except Exception as e:  # pylint: disable=broad-except
        # A missed beat only makes the lock look older; the run itself is fine.
        logging.warning("%s: could not refresh the lock: %s", self.path, e)

  def release(self):
    self._stop.set()
    if self._store is None:
      return
    current = self._store.read()
    if current is not None and (current.get("host"), current.get("pid")) == (
        self.owner["host"], self.owner["pid"]):
      self._store.delete()
    self._store = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.release()


def acquire(model_dir, *, heartbeat_s=HEARTBEAT_S):
  """Takes `<model_dir>/run.lock` for this process; LockError naming the owner if another
  live run holds it. model_dir must exist (locally)."""
  path = model_dir.rstrip("/") + "/" + LOCK_FILE
  store = _GcsStore(path) if path.startswith("gs://") else _LocalStore(path)
  if store.unavailable:
    logging.warning("%s: not locked (%s); make sure no other trainer uses this --model_dir",
                    path, store.unavailable)
    return Lock(path, None, None)
  owner = owner_record()
  with store.guard():
    for _ in range(2):
      if store.create(json.dumps(owner) + "\n"):
        return Lock(path, owner, store, heartbeat_s)
      current = store.read()
      if current is None:
        continue  # released in between: try again
      reason = stale_reason(current, store.age())
      if reason is None:
        raise LockError(
            f"--model_dir={model_dir} is in use by another run ({describe(current)}); wait "
            f"for it to end or use another --model_dir. If that run is gone, delete {path}")
      logging.warning("taking over the stale lock %s (%s): %s", path, reason,
                      describe(current))
      store.delete()
  raise LockError(f"{path}: could not be taken (another run keeps taking it)")


class _LocalStore:
  unavailable = None

  def __init__(self, path):
    self.path = path
    self.directory = os.path.dirname(path)

  def guard(self):
    return _Flock(self.directory)

  def create(self, text):
    fd, tmp = tempfile.mkstemp(prefix=LOCK_FILE + ".", dir=self.directory)
    try:
      with os.fdopen(fd, "w") as f:
        f.write(text)
      os.link(tmp, self.path)
      return True
    except FileExistsError:
      return False
    finally:
      os.unlink(tmp)

  def read(self):
    try:
      with open(self.path) as f:
        text = f.read()
    except FileNotFoundError:
      return None
    try:
      owner = json.loads(text)
    except json.JSONDecodeError:
      owner = None
    return owner if isinstance(owner, dict) else {"command": f"(unreadable lock: {text!r})"}

  def delete(self):
    try:
      os.unlink(self.path)
    except FileNotFoundError:
      pass

  def touch(self):
    os.utime(self.path)

  def age(self):
    try:
      return time.time() - os.stat(self.path).st_mtime
    except FileNotFoundError:
      return None


class _Flock:
  """An exclusive flock(2) of a directory while the block runs (blocks other acquirers)."""

  def __init__(self, directory):
    self.directory = directory

  def __enter__(self):
    self.fd = os.open(self.directory, os.O_RDONLY)
    fcntl.flock(self.fd, fcntl.LOCK_EX)

  def __exit__(self, *exc):
    fcntl.flock(self.fd, fcntl.LOCK_UN)
    os.close(self.fd)


class _NoGuard:
  def __enter__(self):
    pass

  def __exit__(self, *exc):
    pass


class _GcsStore:
  """The lock as a GCS object, created and deleted under generation preconditions."""

  def __init__(self, path):
    self.path = path
    self.generation = None
    try:
      import gcsfs  # pylint: disable=g-import-not-at-top
    except ImportError:
      self.unavailable = "gcsfs is not installed, and tf.io.gfile cannot create an object " \
                         "only if it does not exist"
      return
    self.unavailable = None
    self.fs = gcsfs.GCSFileSystem()

  def guard(self):
    return _NoGuard()  # the preconditions do the guarding

  def create(self, text):
    # The exists() check is for servers that ignore preconditions (the GCS emulator the tests
    # use); on GCS the precondition alone decides, atomically, between racing creators.
    if self.fs.exists(self.path):
      return False
    try:
      self.fs.pipe_file(self.path, text.encode(), mode="create")  # ifGenerationMatch=0
    except FileExistsError:
      return False
    except OSError as e:
      if "412" in str(e) or "Precondition" in str(e):
        return False
      raise
    return True

  def read(self):
    try:
      info = self.fs.info(self.path)
      text = self.fs.cat_file(self.path).decode()
    except FileNotFoundError:
      return None
    self.generation = info.get("generation")
    try:
      owner = json.loads(text)
    except json.JSONDecodeError:
      owner = None
    return owner if isinstance(owner, dict) else {"command": f"(unreadable lock: {text!r})"}

  def touch(self):
    # A metadata update: the object's `updated` time moves, its generation (and content) not.
    self.fs.setxattrs(self.path, heartbeat=str(time.time()))

  def age(self):
    try:
      updated = self.fs.info(self.path).get("updated")
    except FileNotFoundError:
      return None
    if not updated:
      return None
    stamp = datetime.datetime.fromisoformat(updated.replace("Z", "+00:00"))
    return time.time() - stamp.timestamp()

  def delete(self):
    bucket, key, _ = self.fs.split_path(self.path)
    params = {"ifGenerationMatch": self.generation} if self.generation else {}
    try:
      self.fs.call("DELETE", "b/{}/o/{}", bucket, key, **params)
    except FileNotFoundError:
      pass
    except OSError as e:
      if "412" not in str(e) and "Precondition" not in str(e):
        raise
