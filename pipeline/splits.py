"""Split and class-subset policy: which split an example goes to, which classes a subset keeps.

One module for both the Beam job (`--validation_fraction`, `--num_classes=N --class_seed=S`)
and the trainer (`--classes=N --seed=S`), so that the same N and seed pick the same classes in
both. Plain Python: imports neither TensorFlow nor Beam.

Splits come from a hash of each example's stable key, never from a random number, so a rerun
(or another runner, or another worker count) assigns every example to the same split.
"""

import hashlib
import random


class ClassSubsetError(ValueError):
  """A class subset the classes cannot provide; the message names the flag."""


def key_fraction(key):
  """A uniform number in [0, 1) from the key alone, so a rerun assigns the same split."""
  digest = hashlib.sha256(key.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_split(key, split, validation_fraction, test_fraction, has_test):
  """train/validation/test for one example. Held-out parts come out of train only."""
  if split != "train":
    return split
  u = key_fraction(key)
  if not has_test:
    if u < test_fraction:
      return "test"
    u -= test_fraction
  return "validation" if u < validation_fraction else "train"


def seeded_classes(total, count, seed):
  """The `count` class indices of `range(total)` that a seed picks, sorted.

  The first `count` of a permutation of the classes shuffled by `random.Random(seed)` (the
  trainer's rule since its first sweep, so its recorded results stay reproducible): the same
  seed gives nested subsets as the count grows, the 2 of count=2 among the 5 of count=5.
  Sorted, so labels keep the classes' original order whatever the draw.
  """
  if not 0 <= count <= total:
    raise ValueError(f"cannot pick {count} of {total} classes")
  order = list(range(total))
  random.Random(seed).shuffle(order)
  return sorted(order[:count])


def select_classes(class_names, *, num_classes=0, class_seed=0, classes=()):
  """Original class indices the Beam job keeps, in new-label order (label i ->
  class_names[kept[i]]).

  `classes` names them; else `num_classes` picks that many by `seeded_classes`; else all are
  kept. Raises ClassSubsetError naming the flag.
  """
  if classes:
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [c for c in classes if c not in index]
    if unknown:
      shown = ", ".join(class_names[:20]) + (" ..." if len(class_names) > 20 else "")
      raise ClassSubsetError(f"--classes names {unknown} which the source does not have; "
                             f"it has {len(class_names)} classes: {shown}")
    if len(set(classes)) != len(classes):
      raise ClassSubsetError(f"--classes repeats a class: {list(classes)}")
    return [index[c] for c in classes]
  if num_classes:
    if not 0 < num_classes <= len(class_names):
      raise ClassSubsetError(f"--num_classes={num_classes} but the source has "
                             f"{len(class_names)} classes")
    return seeded_classes(len(class_names), num_classes, class_seed)
  return list(range(len(class_names)))
