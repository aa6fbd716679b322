"""The one training loop: sharded init or resume, jitted steps, metrics, evaluation, checkpoints, preemption.

Tasks (pretrain, nmt, classify) describe *what* to train as a `TrainTask`; this module decides *how*:

- state created on the mesh from logical axis names, or restored from the newest complete checkpoint onto the
  current mesh (any mesh: checkpoints are global arrays);
- `jit(step, in_shardings, out_shardings, donate_argnums=0)`; a batch structure that differs from step to step
  (objectives taking turns) compiles once per structure;
- metrics of step s are fetched after step s+1 is dispatched, so the host never stalls the device;
- held-out evaluation every `eval_every` steps and at the end; checkpoints every `checkpoint_every` steps, at the
  end and when a preemption notice arrives.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import optax

from xlm_jax import checkpoint as ckpt
from xlm_jax import parallel, paths
from xlm_jax.errors import UserError
from xlm_jax.train import flops as flops_lib
from xlm_jax.train.metrics import MetricsWriter, Profiler, format_metrics
from xlm_jax.train.optim import make_optimizer
from xlm_jax.train.state import TrainState, sharded_state_layout

@flax.struct.dataclass
class Sums:
  """The summed statistics of one objective over some prediction slots: what losses return and the loop adds.

  loss: summed (weighted) cross-entropy; weight: summed slot weights (the number of predicted tokens); correct:
  summed weights of the slots whose argmax is the target. Means are taken once, over a whole batch (or a whole
  evaluation set): loss / weight. Adding sums of micro-batches and dividing once is the full-batch mean; averaging
  per-micro-batch means is not, when micro-batches hold different numbers of slots.
  """

  loss: jnp.ndarray
  weight: jnp.ndarray
  correct: jnp.ndarray

  def __add__(self, other: "Sums") -> "Sums":
    return jax.tree.map(jnp.add, self, other)


Metrics = dict  # objective name -> Sums


@dataclasses.dataclass(frozen=True)
class Loss:
  """What a task's objectives are, for the loop.

  sums(params, batch, rng, deterministic) -> {objective: Sums} for the objectives present in `batch` (rng None when
    deterministic).
  weights(batch) -> {objective: summed slot weights}: the same `weight` as `sums` gives, from the batch alone (no
    model), so that the loop can normalise every micro-batch by the whole batch's total before the first forward.
  lambdas: objective -> weight schedule fn(step). An objective whose weight is 0 at a step contributes nothing, and
    a step whose objectives all weigh 0 is skipped entirely (no optimizer update, no Adam moment or weight-decay
    move), as the reference skips an objective with coefficient 0.
  """

  sums: Callable[..., Metrics]
  weights: Callable[[Mapping], Mapping[str, jnp.ndarray]]
  lambdas: Mapping[str, Callable[[Any], jnp.ndarray]]

  def objective(self, sums: Metrics, totals: Mapping[str, jnp.ndarray], step) -> jnp.ndarray:
    """sum_k lambda_k(step) * loss_k / total_weight_k: the scalar that is minimised."""
    value = jnp.zeros((), jnp.float32)
    for name, s in sums.items():
      value = value + self.lambdas[name](step) * s.loss / jnp.maximum(totals[name], 1.0)
    return value

  def active(self, batch: Mapping, step) -> jnp.ndarray:
    """True when some objective of `batch` has a non-zero weight at `step`."""
    return jnp.any(jnp.stack([self.lambdas[name](step) != 0 for name in batch]))


@dataclasses.dataclass
class TrainTask:
  """What a task hands to the loop.

  loss: the task's `Loss` (per-objective sums, their weights from the batch, the loss-weight schedules).
  batches: `.batch(step)` -> this process's numpy rows of step `step`; `.fingerprint()` -> str.
  eval_sets: name -> list of batches (numpy, this process's rows), evaluated with `loss.sums`.
  meta: the bundle metadata saved with every checkpoint.
  step_flops(batch) -> model FLOPs of one step on this process's rows (for MFU); step_tokens(batch) -> real
    tokens in this process's rows. The loop multiplies both by the number of processes.
  extra_eval(params, step) -> dict of extra held-out metrics (e.g. BLEU); optional. String values are text samples:
    written to TensorBoard text and metrics.jsonl, left out of the returned metrics.
  """

  name: str
  init_params: Callable[[jax.Array], Any]
  loss: Loss
  batches: Any
  eval_sets: Mapping[str, list]
  meta: dict
  step_flops: Callable[[Mapping], float]
  step_tokens: Callable[[Mapping], int]
  compute_dtype: str = "float32"
  extra_eval: Callable[[Any, int], dict] | None = None
  init_from: Callable[[Any], Any] | None = None  # params -> params, applied to a fresh state (NMT seeding)
  optimizer: tuple | None = None  # (optax transformation, lr schedule) replacing config.train's (fine-tuning)


def prediction_sums(logits: jnp.ndarray, targets: jnp.ndarray, weights: jnp.ndarray) -> Sums:
  """`Sums` of the cross-entropy over the weighted prediction slots of one objective.

  A slot is correct when the target's logit equals the largest logit. The maximum is the one the log-sum-exp
  needs anyway; an argmax over the vocabulary is a separate (index, value) reduction that cost XLA:CPU about as
  much as the whole forward vocabulary product (issue 13). The trap: a target tied with another class for the
  maximum counts as correct here, where `argmax == target` picks the first of the tied classes; with float
  logits from a trained model such ties do not occur.
  """
  logits = logits.astype(jnp.float32)
  top = jnp.max(logits, axis=-1, keepdims=True)
  log_z = jnp.log(jnp.sum(jnp.exp(logits - lax.stop_gradient(top)), axis=-1)) + lax.stop_gradient(top)[..., 0]
  target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  ce = log_z - target_logit
  correct = jnp.sum((target_logit >= top[..., 0]) * weights)
  return Sums(loss=jnp.sum(ce * weights), weight=jnp.sum(weights), correct=correct)


def summarize(objectives: Mapping[str, Any]) -> dict[str, float]:
  """`<name>_loss`, `<name>_ppl` and `<name>_acc` of summed statistics (objectives without slots are left out)."""
  out = {}
  for name in sorted(objectives):
    s = objectives[name]
    weight = float(s.weight)
    if weight <= 0:
      continue
    loss = float(s.loss) / weight
    out[f"{name}_loss"] = loss
    out[f"{name}_ppl"] = math.exp(min(loss, 50.0)) if math.isfinite(loss) else math.nan
    out[f"{name}_acc"] = float(s.correct) / weight
  return out


NONFINITE = ("skip", "stop")


def make_train_step(loss: Loss, tx: optax.GradientTransformation, schedule, accumulate: int):
  """One optimizer update on a batch, split into `accumulate` micro-batches.

  Every micro-batch's objective is normalised by the WHOLE batch's slot weights (`loss.weights`), so the summed
  micro-batch gradients are exactly the full-batch gradient (Flax wmt's weighted cross-entropy; MaxText divides
  by the total weight the same way).

  The update is dropped (params and optimizer state unchanged, the step counter still advances) when the loss, the
  gradient or the learning rate is not finite, or when every objective of the batch weighs 0 at this step.
  Contract: `tx` gives a finite update for a finite gradient and learning rate (Adam, AdamW, SGD: a finite global
  gradient norm bounds every squared gradient, so the moments stay finite), so the update itself is not checked. The metrics say which:
  `skipped_nonfinite` and `skipped_zero_weight` are 1.0 on such a step.

  `stop` (optional, int [rows] sharded like the batch): each process's stop request; `metrics["stop"]` is their
  maximum, the same on every process, which is how several processes agree on the step they stop at.
  """

  def step_fn(state: TrainState, batch, stop=None):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    totals = loss.weights(batch)

    def objective(p, b, k):
      sums = loss.sums(p, b, k, False)
      return loss.objective(sums, totals, state.step), sums

    grad_fn = jax.value_and_grad(objective, has_aux=True)
    if accumulate == 1:
      (value, sums), grads = grad_fn(state.params, batch, key)
    else:
      # micro-batch a holds rows a, a + A, a + 2A, ... (A = accumulate): the batch axis stays the sharded (major)
      # axis, so every device holds a share of every micro-batch.
      micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape((x.shape[0] // accumulate, accumulate) + x.shape[1:]),
                                                  0, 1), batch)

      def body(carry, xs):
        g_sum, s_sum, v_sum = carry
        b, i = xs
        (v, s), g = grad_fn(state.params, b, jax.random.fold_in(key, i))
        return (jax.tree.map(jnp.add, g_sum, g), jax.tree.map(jnp.add, s_sum, s), v_sum + v), None

      first = jax.tree.map(lambda x: x[0], micro)
      s_shape = jax.eval_shape(lambda: grad_fn(state.params, first, key)[0][1])
      zeros = lambda t: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), t)
      (grads, sums, value), _ = jax.lax.scan(body, (zeros(state.params), zeros(s_shape), jnp.zeros(())),
                                             (micro, jnp.arange(accumulate)))
    grad_norm = optax.global_norm(grads)
    lr = schedule(state.step)
    finite = jnp.isfinite(value) & jnp.isfinite(grad_norm) & jnp.isfinite(lr)
    active = loss.active(batch, state.step)

    def commit(_):
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      return optax.apply_updates(state.params, updates), opt_state

    # A branch, not a select of new against old values: a select reads and writes the parameters and both Adam
    # moments once more per step (about 10% of a d=256 step on CPU); the skipped branch returns the donated
    # buffers untouched.
    params, opt_state = jax.lax.cond(finite & active, commit, lambda _: (state.params, state.opt_state), None)
    metrics = {"objectives": sums, "loss": value, "grad_norm": grad_norm, "lr": lr,
               "skipped_nonfinite": 1.0 - finite.astype(jnp.float32),
               "skipped_zero_weight": (finite & ~active).astype(jnp.float32)}
    if stop is not None:  # any process asked to stop: every process reads the same value, one step later
      metrics["stop"] = jnp.max(stop).astype(jnp.float32)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step_fn


def _fetch(metrics):
  """The metrics tree on the host, as Python floats (`Sums` stay `Sums`)."""
  return jax.tree.map(float, jax.device_get(metrics))


def _add(a, b):
  return b if a is None else jax.tree.map(lambda x, y: x + y, a, b)


def evaluate(eval_step, params, eval_sets: Mapping[str, list], mesh) -> dict[str, float]:
  """Run every held-out set; returns summarized metrics prefixed by the set's name (means over the whole set)."""
  results = {}
  for name, batches in eval_sets.items():
    total: dict = {}
    for batch in batches:
      for k, v in _fetch(eval_step(params, parallel.global_batch(batch, mesh))).items():
        total[k] = _add(total.get(k), v)
    for k, v in summarize(total).items():
      results[f"{name}/{k}"] = v
  return results


@dataclasses.dataclass
class TrainResult:
  """The final held-out metrics and the final (sharded) train state."""

  metrics: dict[str, float]
  state: TrainState


def train(task: TrainTask, config, workdir: str, mesh) -> TrainResult:
  """Train `task` for `config.train.steps` steps (resuming in `workdir` when it holds a checkpoint)."""
  rules = parallel.rules_from_config(config.mesh.rules)
  tx, schedule = task.optimizer if task.optimizer is not None else make_optimizer(config.train)
  create, target, shardings = sharded_state_layout(task.init_params, tx, config.seed, mesh, rules)
  checkpointer = ckpt.Checkpointer(f"{workdir}/checkpoints",
                                  keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
  total_steps = int(config.train.steps)
  writer_start = 0
  if config.train.nonfinite not in NONFINITE:
    raise UserError(f"config.train.nonfinite={config.train.nonfinite!r} is not one of {NONFINITE}.")
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    train_target = {"step": target.step, "opt_state": target.opt_state, "rng": target.rng}
    latest, restored = checkpointer.restore_newest(target.params, train_target)
    if restored is not None:
      train_part = restored["train"]
      state = TrainState(step=train_part["step"], params=restored["params"], opt_state=train_part["opt_state"],
                         rng=train_part["rng"])
      data_state = restored.get("data") or {}
      start_step = int(data_state.get("next_step", latest))
      if data_state.get("fingerprint") not in (None, task.batches.fingerprint()):
        print(f"warning: the data settings changed since step {latest}; batches after resume differ from an "
              "uninterrupted run's.", flush=True)
      writer_start = start_step
    else:
      state = create()
      if task.init_from is not None:
        state = state.replace(params=task.init_from(state.params))
      start_step = 0

    writer = MetricsWriter(workdir, total_steps, writer_start, progress_bar=config.log.progress_bar)
    if latest is not None:
      writer.log(f"resumed from {workdir}/checkpoints/{latest} at step {start_step}")
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    writer.log(f"{task.name}: {n_params:,} parameters, {total_steps} steps")
    writer.log(parallel.topology_summary(mesh, int(config.data.batch_size), int(config.train.accumulate_gradients)))
    writer.start(config, {"task": task.name, "parameters": n_params, "mesh": str(dict(mesh.shape)),
                          "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
                          "processes": jax.process_count(), "steps": total_steps, "step": start_step}, workdir)
    profiler = Profiler(config.log.profile_steps, workdir)

    data_sharding = parallel.batch_sharding(mesh)
    step_fn = jax.jit(make_train_step(task.loss, tx, schedule, int(config.train.accumulate_gradients)),
                      in_shardings=(shardings, data_sharding, data_sharding), out_shardings=(shardings, None),
                      donate_argnums=0)
    all_finite = jax.jit(lambda p: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(p)])))
    eval_step = jax.jit(lambda p, b: task.loss.sums(p, b, None, True), in_shardings=(shardings.params, data_sharding))
    peak = float(config.log.peak_flops) or flops_lib.measured_peak_flops(task.compute_dtype)
    peak_total = peak * jax.device_count()

    def run_eval(step: int) -> dict[str, float]:
      results = evaluate(eval_step, state.params, task.eval_sets, mesh)
      if task.extra_eval is not None:
        results.update(task.extra_eval(state.params, step))
      writer.write(step, results, "eval")  # string values (sample translations, fill-ins) become text
      writer.log(f"eval step {step}: " + format_metrics(results))
      return {k: v for k, v in results.items() if not isinstance(v, str)}

    saved_steps = set()

    def save(step: int, force: bool = False) -> None:
      if step in saved_steps or checkpointer.latest_step() == step:
        return
      if not bool(all_finite(state.params)):  # never write a checkpoint that would poison every resume
        raise UserError(f"step {step}: the parameters are not finite; not saving a checkpoint (the newest complete "
                        f"one in {checkpointer.root} is intact). Lower config.train.lr or keep "
                        "config.train.nonfinite='skip'.")
      saved_steps.add(step)
      meta = dict(task.meta, step=step, metrics={k: v for k, v in last_eval.items()})
      train_part = {"step": state.step, "opt_state": state.opt_state, "rng": state.rng}
      checkpointer.save(step, state.params, meta, train=train_part, data={"next_step": step,
                                                                         "fingerprint": task.batches.fingerprint()},
                        force=force)

    stop_requested = StopSignal()
    from xlm_jax.data.loader import Loader
    from xlm_jax.data.mixture import batch_checksum
    iterator = Loader(task.batches, start_step, total_steps, workers=config.data.workers, mesh=mesh,
                      device_prefetch=config.data.device_prefetch,
                      steps_per_element=config.data.get("steps_per_element", 16))
    # every process records the checksums of its own rows (process i > 0 in batch_checksums.process<i>.jsonl)
    suffix = f".process{jax.process_index()}" if jax.process_index() else ""
    checksums = paths.AppendFile(paths.join(workdir, f"batch_checksums{suffix}.jsonl")) \
        if config.log.batch_checksums else None
    pending = None  # (step, metrics on device, flops, tokens, host batch) of the previous step
    window = {"t0": None, "steps": 0, "flops": 0.0, "tokens": 0, "sums": {}}
    last_eval: dict[str, float] = {}
    skipped = 0
    step = start_step

    def account(final: bool = False) -> bool:
      """Log the previous step; handle a non-finite one; True when some process asked to stop."""
      nonlocal skipped
      values = _account(pending, window, writer, config, peak_total, final=final)
      if values["skipped_nonfinite"]:
        bad_step, local = pending[0], pending[4]
        bad = [k for k, v in sorted(values["objectives"].items()) if not math.isfinite(v.loss)]
        bad = (f"objective {', '.join(bad)}" if bad
               else f"losses finite; the gradient or the learning rate ({values['lr']}) is not")
        where = (f"step {bad_step}: non-finite loss, gradient or learning rate ({bad}; batch checksum "
                 f"{batch_checksum(local)}; grad_norm {values['grad_norm']})")
        if config.train.nonfinite == "stop":
          raise NonFiniteError(f"{where}; stopped (config.train.nonfinite='stop'). The update was not applied and no "
                               "checkpoint was written after it; re-run to resume from the newest one, or set "
                               "config.train.nonfinite='skip'.")
        skipped += 1
        writer.log(f"{where}: update skipped ({skipped} so far in this run)")
      return bool(values.get("stop", 0.0))

    try:
      while step < total_steps:
        _, local, batch = next(iterator)  # batch: already on the devices (copied while the last step ran)
        if checksums is not None:
          checksums.write(json.dumps({"step": step, "checksum": batch_checksum(local)}) + "\n")
          checksums.flush()
        rows = jax.tree.leaves(batch)[0].shape[0] // jax.process_count()
        flags = parallel.global_batch(np.full((rows,), int(stop_requested.requested), np.int32), mesh)
        profiler.before(step)
        state, metrics = step_fn(state, batch, flags)
        if profiler.after(step, state):
          writer.log(f"profile of steps {profiler.start_step}..{step} written to {profiler.directory}")
        flops = task.step_flops(local) * jax.process_count()
        tokens = task.step_tokens(local) * jax.process_count()
        stop = account() if pending is not None else False
        pending = (step, metrics, flops, tokens, local)
        step += 1
        if step % config.checkpoint.every == 0 and step < total_steps:
          save(step)
        if config.log.eval_every and step % config.log.eval_every == 0 and step < total_steps:
          last_eval = run_eval(step)
        stop = stop or (jax.process_count() == 1 and stop_requested.requested)
        if step < total_steps and (stop or checkpointer.reached_preemption(step)):
          account(final=True)
          pending = None
          writer.log(f"stop requested ({stop_requested.describe()}) at step {step}: saving")
          save(step, force=True)
          checkpointer.wait()
          writer.log(f"saved step {step} to {checkpointer.root}/{step}; stopped. Re-run the same command to resume.")
          return TrainResult(last_eval, state)
      if pending is not None:
        account(final=True)
      if latest is None or start_step < total_steps or not last_eval:
        last_eval = run_eval(total_steps)
      save(total_steps, force=True)
      checkpointer.wait()
    finally:
      profiler.close()
      stop_requested.restore()
      iterator.close()
      if checksums is not None:
        checksums.close()
      checkpointer.close()
      writer.close()
  return TrainResult(last_eval, state)


class NonFiniteError(UserError):
  """A non-finite loss or gradient with `config.train.nonfinite='stop'`."""


class StopSignal:
  """SIGTERM, SIGINT (Ctrl-C) and SIGUSR1 (SLURM's advance notice, a scheduler's preemption) ask the loop to
  finish the step, checkpoint, wait for the save and stop (exit status 0). A second SIGINT interrupts at once.

  Several processes must agree on the step they stop at (a checkpoint is a collective): each process's flag goes
  into the next jitted step and comes back as one maximum, so every process stops at the same step, one step after
  the first request reached any of them.
  """

  SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")

  def __init__(self):
    import signal
    import threading
    self.requested = False
    self.received: str | None = None
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for name in self.SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None:
          self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    import signal
    if self.requested and signum == signal.SIGINT:  # Ctrl-C twice: stop now, without the checkpoint
      self.restore()
      raise KeyboardInterrupt
    self.requested = True
    self.received = signal.Signals(signum).name

  def describe(self) -> str:
    return self.received or "by another process or a preemption notice"

  def restore(self):
    import signal
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}


def _account(pending, window, writer: MetricsWriter, config, peak_total: float, final: bool = False) -> dict:
  """Fetch the previous step's metrics (the next step is already dispatched) and log every `log.every` steps.

  Returns the fetched metrics of that step. Means over a logging window are taken once over summed statistics;
  non-finite values are kept (the writer records them as NaN), never dropped."""
  step, metrics, flops, tokens = pending[:4]
  values = _fetch(metrics)
  now = time.perf_counter()
  if window["t0"] is None:  # the first step includes compilation: start timing after it
    window["t0"] = now
  else:
    window["steps"] += 1
    window["flops"] += flops
    window["tokens"] += tokens
  for k, v in values.items():
    window["sums"][k] = _add(window["sums"].get(k), v)
  window["n"] = window.get("n", 0) + 1
  writer.progress(1, loss=values["loss"])
  done = step + 1
  if done % config.log.every == 0 or final:
    sums = window.pop("sums")
    n = window.pop("n")
    report = summarize(sums.get("objectives", {}))
    report.update(loss=sums["loss"] / n, grad_norm=sums["grad_norm"] / n, lr=values["lr"])
    for k in ("skipped_nonfinite", "skipped_zero_weight"):
      if sums.get(k):
        report[k] = sums[k]
    elapsed = now - window["t0"]
    if window["steps"] and elapsed > 0:
      report["tokens_per_sec"] = window["tokens"] / elapsed
      report["steps_per_sec"] = window["steps"] / elapsed
      report["mfu"] = window["flops"] / elapsed / peak_total
    writer.write(done, report, "train")
    writer.log(f"step {done}: " + format_metrics(report, sorted(k for k in report if "/" not in k)))
    window.update(t0=now, steps=0, flops=0.0, tokens=0, sums={})
  return values
