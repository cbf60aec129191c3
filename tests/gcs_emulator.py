"""A real GCS server on loopback for the gs:// tests: `gcp-storage-emulator` in a subprocess.

    with gcs_emulator.running(tmp_dir, bucket="data") as emulator:
      ...  # gs://data/... works through gcsfs and through Beam's FileSystems

`running` picks a free port on 127.0.0.1, starts the emulator with a temporary storage
directory, waits until it answers, points the environment of this process (and of every
process it starts) at it, and stops it and restores the environment on exit.

Two things are set besides STORAGE_EMULATOR_HOST (both seen on the development machines):
  * GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false, read when gcsfs is *imported*: with it on, every
    gcsfs call stalls ~60 s on a gRPC bucket-type probe the emulator cannot answer. This
    module sets it at import, so import it before anything imports gcsfs.
  * GOOGLE_APPLICATION_CREDENTIALS, pointing at an `authorized_user` credentials file with a
    static access token that expires in 2099. Beam's GCS client looks up Application Default
    Credentials before its first request (apache_beam/internal/gcp/auth.py) and, when there
    are none, retries 4 times with back-off (~18 s) before connecting anonymously. Beam has no
    option to skip that for its file system (`--no_auth` is read by the Dataflow runner only).
    A still-valid token is never refreshed, so nothing ever talks to Google; the emulator
    ignores the Authorization header. gcsfs picks up the same credentials.
"""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

from tools import cli

os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
if "gcsfs" in sys.modules:  # Too late for the setting above to take effect.
  raise ImportError("import tests.gcs_emulator before gcsfs (see its docstring)")

EMULATOR = os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator")
START_TIMEOUT_S = 30


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Emulator:
  def __init__(self, host, bucket, process):
    self.host = host  # "http://127.0.0.1:PORT"
    self.bucket = bucket
    self.process = process

  def url(self, path=""):
    """gs://<bucket>/<path>."""
    return f"gs://{self.bucket}/{path}"

  def fs(self):
    """A fresh gcsfs file system talking to this emulator (no cached instance)."""
    import gcsfs
    return gcsfs.GCSFileSystem(endpoint_url=self.host, token="anon", skip_instance_cache=True)


def _static_token_credentials(path):
  with open(path, "w") as f:
    json.dump({"type": "authorized_user", "client_id": "emulator", "client_secret": "emulator",
               "refresh_token": "emulator", "token": "emulator",
               "expiry": "2099-01-01T00:00:00Z"}, f)
  return path


def _wait_until_up(host, process):
  deadline = time.time() + START_TIMEOUT_S
  while time.time() < deadline:
    if process.poll() is not None:
      raise RuntimeError(f"gcp-storage-emulator exited with {process.returncode}: "
                         f"{process.stderr.read().decode(errors='replace')[-2000:]}")
    try:
      with urllib.request.urlopen(host + "/", timeout=1) as r:
        if r.status == 200:
          return
    except OSError:
      time.sleep(0.1)
  raise RuntimeError(f"gcp-storage-emulator did not answer on {host} in {START_TIMEOUT_S} s")


@contextlib.contextmanager
def running(work_dir, bucket="test-bucket"):
  """Starts the emulator with storage under work_dir; yields an Emulator; stops it."""
  work_dir = str(work_dir)
  storage = os.path.join(work_dir, "gcs")
  os.makedirs(storage, exist_ok=True)
  port = free_port()
  host = f"http://127.0.0.1:{port}"
  process = subprocess.Popen(
      [EMULATOR, "-d", storage, "start", "-H", "127.0.0.1", "--port", str(port),
       "--default-bucket", bucket, "-q"],
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  env = {"STORAGE_EMULATOR_HOST": host,
         "GOOGLE_APPLICATION_CREDENTIALS": _static_token_credentials(
             os.path.join(work_dir, "static_token_credentials.json")),
         "GOOGLE_CLOUD_PROJECT": "emulator"}
  saved = {k: os.environ.get(k) for k in env}
  try:
    _wait_until_up(host, process)
    os.environ.update(env)
    yield Emulator(host, bucket, process)
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    cli.stop(process, grace_seconds=10)
    process.stderr.close()
    shutil.rmtree(storage, ignore_errors=True)
