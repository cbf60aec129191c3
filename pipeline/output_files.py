"""Writing the job's output files so that a failure leaves nothing half-written.

* `write_atomically`: a whole small file (dataset_info.json) goes to a hidden temporary name
  in the same folder and is renamed to its name once complete. A full disk or a kill while
  writing leaves the old file or none, never a 0-byte or cut one under the final name.
  Locally the rename is atomic; on gs:// a rename is a copy and a delete, and an object only
  appears once its upload completes. Shards are written the same way (beam_job.WriteShard);
  rejected.csv by Beam's WriteToText, which writes under `beam-temp-*` and renames too.
* `remove_leftovers`: deletes what a failed or killed job left in its output folder
  (`.temp-*` files, Beam's `beam-temp-*` folders).
* `os_error_line`: the one line that reports an OS error (disk full, permissions, a
  read-only file system) wherever in the job it was raised, instead of a traceback.

Everything goes through Beam's FileSystems (the job's workers have no TensorFlow), or through
tf.io.gfile for the test helpers and benchmarks, which have TensorFlow and no Beam job.
"""

import errno
import glob
import logging
import os
import re
import shutil
import uuid

TEMP_PREFIX = ".temp-"  # + a unique id + "-" + the final name: a file being written
BEAM_TEMP_PREFIX = "beam-temp-"  # Beam's file sinks write under <output_dir>/beam-temp-<id>/

# How Beam's runners pass on an exception raised in a stage: as text, "OSError: [Errno 28]
# No space left on device: '/out/x' [while running 'WriteShards/Write']", in a RuntimeError.
_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\] ([^'\[\]\n]*?)(?:: '([^'\n]*)')?(?= \[while|$|\n)")
_STEP = re.compile(r"\[while running '([^']*)'\]")


def join(directory, name):
  """Joins like posixpath but keeps `gs://bucket` prefixes intact."""
  return directory.rstrip("/") + "/" + name


def temp_path(path):
  """A hidden temporary name beside path, unique to this writer."""
  directory, name = path.rsplit("/", 1) if "/" in path else (".", path)
  return join(directory, f"{TEMP_PREFIX}{uuid.uuid4().hex}-{name}")


def write_atomically(path, data, *, beam=False):
  """Writes the bytes `data` to `path` (local or gs://) through a temporary file and a rename.
  beam: through Beam's FileSystems (else tf.io.gfile). On failure the temporary file is
  deleted and the error raised; an OSError then names `path`."""
  temp = temp_path(path)
  try:
    if beam:
      from apache_beam.io.filesystems import FileSystems
      with FileSystems.create(temp) as f:
        f.write(data)
      FileSystems.rename([temp], [path])
    else:
      import tensorflow as tf
      with tf.io.gfile.GFile(temp, "wb") as f:
        f.write(data)
      tf.io.gfile.rename(temp, path, overwrite=True)
  except BaseException as e:
    _delete_quietly(temp, beam=beam)
    cause = find_os_error(e)
    if cause is not None and cause[0] is not None:
      raise OSError(cause[0], cause[1], path) from e
    raise


def _delete_quietly(path, *, beam):
  try:
    if beam:
      from apache_beam.io.filesystems import FileSystems
      if FileSystems.exists(path):
        FileSystems.delete([path])
    else:
      import tensorflow as tf
      if tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)
  except Exception as e:  # pylint: disable=broad-except  # Best effort, after a failure.
    logging.debug("could not delete %s: %s", path, e)


def remove_leftovers(output_dir):
  """Deletes `<output_dir>/.temp-*` and Beam's `<output_dir>/beam-temp-*` folders, best effort
  (this runs after a failure too, when the file system may be what failed). Returns the
  paths deleted. Only this job writes such names into its output folder."""
  removed = []
  if "://" not in output_dir:
    # Beam's match lists files only, never the beam-temp-<id>/ folders themselves.
    for path in sorted(glob.glob(os.path.join(glob.escape(output_dir), TEMP_PREFIX + "*"))
                       + glob.glob(os.path.join(glob.escape(output_dir), BEAM_TEMP_PREFIX + "*"))):
      try:
        if os.path.isdir(path) and not os.path.islink(path):
          shutil.rmtree(path)
        else:
          os.remove(path)
        removed.append(path)
      except OSError as e:
        logging.debug("could not delete %s: %s", path, e)
    return removed
  from apache_beam.io.filesystems import FileSystems
  # An object store has no folders: a beam-temp-<id>/ "folder" is the objects under it,
  # which `beam-temp-*` does not reach (`*` stops at "/").
  patterns = [join(output_dir, TEMP_PREFIX + "*"), join(output_dir, BEAM_TEMP_PREFIX + "*"),
              join(output_dir, BEAM_TEMP_PREFIX + "*/*")]
  try:
    paths = [m.path for r in FileSystems.match(patterns) for m in r.metadata_list]
  except Exception as e:  # pylint: disable=broad-except  # E.g. the bucket cannot be listed.
    logging.debug("could not list %s: %s", output_dir, e)
    return removed
  for path in paths:
    try:
      FileSystems.delete([path])
      removed.append(path)
    except Exception as e:  # pylint: disable=broad-except
      logging.debug("could not delete %s: %s", path, e)
  return removed


def find_os_error(exc):
  """(errno, text, path or None) of the first OS error in exc, its causes and (for Beam's
  BeamIOError) the errors it collects; failing that, parsed from the text that Beam's runners
  turn a stage's exception into. None when there is none."""
  chain = _chain(exc)
  for e in chain:
    if isinstance(e, OSError) and e.errno is not None:
      return e.errno, e.strerror or str(e), e.filename
  for e in chain:
    match = _ERRNO_TEXT.search(str(e))
    if match:
      return int(match.group(1)), match.group(2).strip(), match.group(3)
  return None


def _chain(exc):
  """exc, then its causes and contexts, and the errors a BeamIOError collects, each once."""
  out, pending, seen = [], [exc], set()
  while pending:
    e = pending.pop(0)
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    out.append(e)
    details = getattr(e, "exception_details", None)  # BeamIOError: {path(s): exception}
    if isinstance(details, dict):
      pending.extend(v for v in details.values() if isinstance(v, BaseException))
    pending.extend([e.__cause__, e.__context__])
  return out


def os_error_line(exc, output_dir):
  """One line for an OS error anywhere in exc ("<path>: No space left on device (ENOSPC)..."),
  or None when exc holds none (a bug, which should fail with its traceback)."""
  found = find_os_error(exc)
  if found is None:
    return None
  number, text, path = found
  step = _STEP.search(str(exc))
  where = path or f"writing into --output_dir={output_dir}"
  line = f"{where}: {text} ({errno.errorcode.get(number, f'errno {number}')})"
  if step:
    line += f" in the job's step {step.group(1)}"
  if number == errno.ENOSPC:
    line += "; free space there or choose another --output_dir, then rerun"
  elif number in (errno.EACCES, errno.EPERM, errno.EROFS):
    line += "; the job must be able to write there"
  return line
