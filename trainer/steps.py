"""The compiled train and eval steps, and running them: one code path for every strategy.

A step returns per-replica SUMS (loss, correct, count), reduced over replicas and summed over
steps, so that means come out exact whatever the number of replicas, workers and padding
examples. Steps run STEPS_PER_CALL at a time inside one tf.function call.
"""

import math

import keras
import tensorflow as tf

from trainer import augment as augment_lib

# Steps per tf.function call. One Python call per step costs about a millisecond of dispatch,
# a large share of a short accelerator step (a few ms for `simple` at batch 128); looping
# inside the function removes it.
STEPS_PER_CALL = 20


def _sums(per_example_loss, labels, probs, weights):
  """Per-replica sums (not means): summed over replicas and steps they give exact means."""
  correct = tf.cast(tf.equal(tf.argmax(probs, axis=-1, output_type=tf.int32), labels),
                    tf.float32)
  return {"loss": tf.reduce_sum(per_example_loss * weights),
          "correct": tf.reduce_sum(correct * weights),
          "count": tf.reduce_sum(weights)}


def _reduce(strategy, per_replica):
  return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
          for k, v in per_replica.items()}


class NonFiniteLossError(ArithmeticError):
  """A train step's loss or gradient norm was not finite (inf or nan).

  step: the 1-based step of the run_steps call; loss: that step's mean loss; grad_norm: the
  sum of the replicas' gradient norms (None when the step did not check them).
  """

  def __init__(self, step, loss, grad_norm):
    self.step, self.loss, self.grad_norm = step, loss, grad_norm
    what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {grad_norm}"
    super().__init__(f"step {step}: {what}")


def _looped(strategy, step_fn, num_classes=None, check_finite=False, stoppable=False):
  """fn(iterator, num_steps) running `step_fn` on num_steps batches in one tf.function call,
  returning the {loss, correct, count} sums (and "confusion" [true, predicted] counts when
  num_classes is given) over all replicas and steps.

  check_finite: step_fn also returns "nonfinite" (1 where its loss or gradients were not
  finite) and "grad_norm"; the loop stops at the first step that any replica found not
  finite and returns its index ("bad_step", -1 if none), mean loss and gradient norm. The
  flag is all-reduced, so every replica and worker stops at the same step.

  stoppable: step_fn also returns "stop" (1 once a stop was requested: trainer/interrupts.py);
  the loop ends after the first step at which any replica of any worker saw it (all-reduced
  too) and returns the steps it ran ("stopped_after", -1 if it ran them all).
  """

  @tf.function
  def run(iterator, num_steps):
    totals = {"loss": tf.constant(0.0), "correct": tf.constant(0.0), "count": tf.constant(0.0)}
    if num_classes:
      totals["confusion"] = tf.zeros([num_classes, num_classes])
    bad = {"bad_step": tf.constant(-1), "bad_loss": tf.constant(0.0),
           "bad_grad_norm": tf.constant(0.0)}
    stopped_after = tf.constant(-1)
    for i in tf.range(num_steps):
      sums = _reduce(strategy, strategy.run(step_fn, args=next(iterator)))
      if check_finite and sums["nonfinite"] > 0:
        bad = {"bad_step": i, "bad_loss": sums["loss"] / sums["count"],
               "bad_grad_norm": sums["grad_norm"]}
        break
      totals = {k: totals[k] + sums[k] for k in totals}
      if stoppable and sums["stop"] > 0:
        stopped_after = i + 1
        break
    if check_finite:
      totals.update(bad)
    if stoppable:
      totals["stopped_after"] = stopped_after
    return totals

  return run


def make_train_step(model, optimizer, strategy, global_batch_size, *, augment=None, seed=0,
                    stop_flag=None):
  """Returns train_steps(iterator, n) -> summed {loss, correct, count} of n global batches.

  stop_flag: a bool tf.Variable (interrupts.StopRequest.flag); once it is True the call ends
  after the step that is running, on every replica and worker alike.

  augment: an AugmentConfig to apply inside the step (--augment_on=device). Its draws are
  seeded by (seed, optimizer step, replica), so they differ per batch and replica and a
  resumed run does not replay them.
  """
  base_seed = tf.constant([seed, 7], tf.int64)

  def step_fn(images, labels):
    if augment is not None:
      replica = tf.distribute.get_replica_context().replica_id_in_sync_group
      step_seed = tf.random.experimental.stateless_fold_in(
          base_seed, tf.cast(optimizer.iterations, tf.int64), alg=augment_lib.RNG_ALG)
      step_seed = tf.random.experimental.stateless_fold_in(step_seed, replica,
                                                           alg=augment_lib.RNG_ALG)
      images = augment_lib.augment_batch(images, augment, seed=step_seed)
    images = tf.cast(images, tf.float32)  # uint8 pixels in; the model rescales
    with tf.GradientTape() as tape:
      probs = model(images, training=True)
      per_example = keras.losses.sparse_categorical_crossentropy(labels, probs)
      # Divide by the GLOBAL batch: the replicas' gradients are summed, so the sum of
      # their losses is the mean over the global batch.
      loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
      if model.losses:
        loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
      scaled_loss = optimizer.scale_loss(loss)
    grads = tape.gradient(scaled_loss, model.trainable_variables)
    optimizer.apply(grads, model.trainable_variables)
    sums = _sums(per_example, labels, probs, tf.ones_like(per_example))
    # Loss scaling (float16) overflows the scaled gradients now and then by design, and the
    # LossScaleOptimizer skips those steps itself: there only the loss is checked.
    grad_norm = tf.constant(0.0) if loss_scaling else tf.linalg.global_norm(grads)
    finite = tf.math.is_finite(sums["loss"]) & tf.math.is_finite(grad_norm)
    sums["nonfinite"] = 1.0 - tf.cast(finite, tf.float32)
    sums["grad_norm"] = tf.cast(grad_norm, tf.float32)
    if stop_flag is not None:
      # Read once this step's gradients exist: a read with no inputs could run as soon as
      # the loop starts the iteration, several steps ahead of the one that is computing.
      with tf.control_dependencies([sums["loss"], grad_norm]):
        sums["stop"] = tf.cast(stop_flag.read_value(), tf.float32)
    return sums

  loss_scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
  return _looped(strategy, step_fn, check_finite=True, stoppable=stop_flag is not None)


def make_eval_step(model, strategy, num_classes=None):
  """Returns eval_steps(iterator, n) -> summed weighted {loss, correct, count} of n batches
  (and the "confusion" matrix, rows true and columns predicted, if num_classes is given)."""

  def step_fn(images, labels, weights):
    probs = model(tf.cast(images, tf.float32), training=False)
    per_example = keras.losses.sparse_categorical_crossentropy(labels, probs)
    sums = _sums(per_example, labels, probs, weights)  # padding has weight 0
    if num_classes:
      predicted = tf.argmax(probs, axis=-1, output_type=tf.int32)
      sums["confusion"] = tf.math.confusion_matrix(labels, predicted, num_classes,
                                                   weights=weights, dtype=tf.float32)
    return sums

  return _looped(strategy, step_fn, num_classes)


def run_steps(looped_step, iterator, steps, *, report=None, report_every=0, first_step=0,
              progress=None):
  """Runs `steps` steps; returns {"loss": mean loss, "accuracy": ..., "examples": count}
  (and "confusion" as nested int lists when the step counts it).

  report: fn(step, sums) called after every step that is a multiple of report_every, step
  counted from first_step (the steps done before this call), with the host-side {loss,
  correct, count} sums of the steps since the previous report. Calls then end at those
  steps too; the numbers are the ones each call returns anyway (the device is synced once
  per call, as without reports, not per step).

  progress: fn(steps done in this run_steps, the {loss, correct, count} sums of those steps)
  after every call (trainer/progress.py).

  Raises NonFiniteLossError at the first train step whose loss or gradients were not finite
  (the steps after it in its call do not run). A train step made with a stop_flag that was
  set ends the run early: the result then has "stopped": the steps that ran.
  """
  totals = None
  since = None  # sums since the last report
  done = 0
  while done < steps:
    size = min(STEPS_PER_CALL, steps - done)
    if report is not None and report_every:
      size = min(size, report_every - (first_step + done) % report_every)
    # A tensor, not an int: a new Python value would trace the function again.
    sums = looped_step(iterator, tf.constant(size))
    if "bad_step" in sums:
      bad = {k: sums.pop(k) for k in ("bad_step", "bad_loss", "bad_grad_norm")}
      if int(bad["bad_step"]) >= 0:
        raise NonFiniteLossError(done + int(bad["bad_step"]) + 1, float(bad["bad_loss"]),
                                 float(bad["bad_grad_norm"]))
    stopped_after = int(sums.pop("stopped_after", -1))
    done += size if stopped_after < 0 else stopped_after
    totals = sums if totals is None else {k: totals[k] + v for k, v in sums.items()}
    if report is not None and report_every:
      since = sums if since is None else {k: since[k] + v for k, v in sums.items()}
      if (first_step + done) % report_every == 0:
        report(first_step + done, {k: float(since[k]) for k in ("loss", "correct", "count")})
        since = None
    if stopped_after >= 0:
      break
    if progress is not None:
      progress(done, totals)
  count = float(totals["count"])
  out = {"loss": float(totals["loss"]) / count, "accuracy": float(totals["correct"]) / count,
         "examples": count}
  if stopped_after >= 0:
    out["stopped"] = done
  if "confusion" in totals:
    out["confusion"] = totals["confusion"].numpy().round().astype(int).tolist()
  return out


def barrier(strategy):
  """Returns once every worker has called it (an all-reduce waits for all of them)."""
  strategy.reduce(tf.distribute.ReduceOp.SUM,
                  strategy.run(tf.function(lambda: tf.constant(1.0))), axis=None)
