"""The named random streams of a run, each derived from --seed.

Every consumer of randomness draws from its own stream, derived from (seed, stream, indices)
by numpy's SeedSequence, so that streams never collide however seeds and indices are chosen
(unlike `seed + 1000 * epoch`, where seed 1000 at epoch 0 replays seed 0 at epoch 1).
"""

import numpy as np

# Stream ids: fixed forever, or a rerun of an old run no longer repeats it.
TRAIN_DATA = 1  # file order, shuffle and host augmentation of the train input; (epoch, pipeline)
DEVICE_AUGMENT = 2  # --augment_on=device draws; (stage,)
INPUT_PIPELINE = 3  # one input pipeline's share of TRAIN_DATA's seed; (pipeline,)
SUMMARY_IMAGES = 4  # --augment_on=device: the draws of the first batch shown in TensorBoard; ()

_UINT64 = 2**64


def derive(seed, stream, *indices):
  """A non-negative int64 seed for `stream` of run seed `seed` at `indices` (ints >= 0)."""
  entropy = [seed % _UINT64, stream, *indices]  # SeedSequence takes non-negative ints
  return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)
