"""Training input on tf.data service workers (`--data_service=grpc://HOST:PORT`).

When one host's CPUs cannot decode, resize and augment as fast as its accelerators train, the
train input pipeline (read, decode, shuffle, host augmentation, batch) runs on the workers
of a tf.data service instead: a dispatcher and worker processes on other machines (or on this
one: `python -m tools.launch_data_service`). The trainer's own host then only receives
finished batches. Validation and test stay local: they are small, deterministic and weighted
per example, and every worker must see the same validation loss.

Processing mode: "distributed_epoch". The dispatcher hands out the train shard files, one at a
time, to whichever worker asks next; each worker runs the rest of the pipeline on the files it
is given. So
  - one pass over the files visits every training example once, however many workers there
    are (in "parallel_epochs" every worker would produce the whole dataset, with the same
    seed, so N workers would repeat each example N times per pass, in step);
  - fast workers take more files than slow ones, and workers can join while a run goes on;
  - the file order is drawn by the dispatcher, new each pass, as without the service.
The pipeline is endless (it repeats), as without the service, so the epoch boundary is where
it always was: `steps_per_epoch` batches, the same number with or without the service, then
validation and the early-stopping decision, which the service does not touch.

What the service changes in the pipeline (input_pipeline.train_dataset(service_job=True)):
every input pipeline of the run (each worker of --strategy=multi_worker) registers the same
dataset, over all the train files, and they share one job (`job_name`), which deals its batches
out among them; the train split is not cached (the files a service worker is given differ from
pass to pass, so a cache would replay the wrong ones). The augmentation draws of a batch are
seeded by its number and its first image (each service worker counts its own batches from 0),
with or without the service, so that with --deterministic and one service worker a run gets
the same batches, and ends with the same weights, as without the service with --cache=none
(a cache would replay the first pass's file order in later passes).

A service worker that dies: the trainer goes on with the others (the dispatcher gives the
dead worker's remaining files to them); the examples that worker had read or prepared but
not yet delivered are not seen in that pass (the mode delivers each example at most once).
The dispatcher unreachable at start, or no worker answering: `check` fails within
--worker_timeout with one line (trainer.main exits with status 1).
"""

import hashlib
import socket
import threading
import time

import tensorflow as tf

from trainer import config as config_lib

PROCESSING_MODE = "distributed_epoch"


class DataServiceError(RuntimeError):
  """The tf.data service cannot serve this run; the message says what and what to check."""


def job_name(model_dir, first_epoch):
  """The job every input pipeline of one run shares (the workers of --strategy=multi_worker
  all derive it from the same --model_dir and restored epoch). A rerun that resumes from a
  later epoch starts a new job, whose dataset draws from that epoch's seed."""
  digest = hashlib.sha1(model_dir.rstrip("/").encode()).hexdigest()[:12]
  return f"train-{digest}-from-epoch-{first_epoch}"


def distribute(dataset, address, name):
  """`dataset`, processed by the service's workers as one job named `name`."""
  return dataset.apply(tf.data.experimental.service.distribute(
      processing_mode=PROCESSING_MODE, service=address, job_name=name))


def check(address, timeout_seconds):
  """Raises DataServiceError unless the dispatcher at `address` answers and a worker of its
  serves one element within `timeout_seconds` (0: wait as long as it takes).

  Without this the first training step would wait forever: the service's client retries an
  unreachable dispatcher, and waits for workers, without end.
  """
  host, port = config_lib.data_service_address(address)
  started = time.time()
  try:
    with socket.create_connection((host, port), timeout=timeout_seconds or None):
      pass
  except OSError as e:
    raise DataServiceError(
        f"--data_service={address}: no dispatcher answers at {host}:{port} ({e.strerror or e}); "
        "start one with `python -m tools.launch_data_service` (it prints the address) or fix "
        "the host and port") from None
  result = {}

  def probe():
    try:
      probe_ds = tf.data.Dataset.from_tensors(tf.constant(1, tf.int64))
      probe_ds = probe_ds.apply(tf.data.experimental.service.distribute(
          processing_mode="parallel_epochs", service=address,
          job_name=f"probe-{socket.gethostname()}-{time.time_ns()}"))
      result["elements"] = [int(x) for x in probe_ds.take(1)]
    except Exception as e:  # pylint: disable=broad-except (re-raised below, in this thread)
      result["error"] = e

  # A daemon thread: a probe that never returns does not keep the process from exiting.
  thread = threading.Thread(target=probe, name="data-service-probe", daemon=True)
  thread.start()
  left = None if not timeout_seconds else max(0.0, timeout_seconds - (time.time() - started))
  thread.join(left)
  if "error" in result:
    error = result["error"]
    raise DataServiceError(f"--data_service={address}: the service failed a test element: "
                           f"{' '.join(str(getattr(error, 'message', error)).split())}")
  if result.get("elements") != [1]:
    raise DataServiceError(
        f"--data_service={address}: the dispatcher accepts connections but no worker served "
        f"an element within --worker_timeout={timeout_seconds} s: start workers "
        "(`python -m tools.launch_data_service --role=workers --dispatcher=HOST:PORT`), and "
        "check that the address each worker gives (--worker_host) is reachable from here")
