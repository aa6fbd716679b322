"""Optimizer and schedules: Adam(W) with XLM's inverse-sqrt warm-up, global-norm clipping, loss-weight schedules.

Differences from the reference's own Adam (xlm/optim.py), stated so nobody is surprised:
- optax's Adam divides by sqrt(v_hat) + eps; the reference folds bias correction into the step size, which
  scales eps by sqrt(1 - beta2**t). With eps 1e-8..1e-6 this matters only in the first few hundred steps.
- weight decay is decoupled (AdamW), as in the reference: p -= lr * wd * p.
- on resume the Adam moments are restored; the reference drops them.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

from xlm_jax.errors import UserError


def inverse_sqrt_schedule(lr: float, warmup_steps: int, warmup_init_lr: float = 1e-7, exp_factor: float = 0.5):
  """Linear warm-up from `warmup_init_lr` to `lr` over `warmup_steps`, then lr * (warmup / step)**exp_factor.

  Step 0 (the first update) uses `warmup_init_lr`, as the reference does (it updates the rate after each step).
  """

  def schedule(count):
    count = jnp.asarray(count, jnp.float32)
    if warmup_steps <= 0:
      return lr * jnp.ones_like(count)
    warm = warmup_init_lr + (lr - warmup_init_lr) * count / warmup_steps
    decay = lr * (warmup_steps / jnp.maximum(count, 1.0)) ** exp_factor
    return jnp.where(count < warmup_steps, warm, decay)

  return schedule


def make_schedule(train_cfg):
  kind = train_cfg.schedule
  if kind == "inverse_sqrt":
    return inverse_sqrt_schedule(train_cfg.lr, train_cfg.warmup_steps, train_cfg.warmup_init_lr)
  if kind == "constant":
    return optax.constant_schedule(train_cfg.lr)
  if kind == "linear_warmup_cosine":
    return optax.warmup_cosine_decay_schedule(train_cfg.warmup_init_lr, train_cfg.lr, max(train_cfg.warmup_steps, 1),
                                              max(train_cfg.steps, train_cfg.warmup_steps + 1))
  raise UserError(f"config.train.schedule={kind!r} is not one of 'inverse_sqrt', 'constant', "
                  "'linear_warmup_cosine'.")


def make_optimizer(train_cfg) -> tuple[optax.GradientTransformation, callable]:
  """(optimizer, learning-rate schedule) from `config.train`."""
  schedule = make_schedule(train_cfg)
  parts = []
  if train_cfg.clip_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(train_cfg.clip_grad_norm))
  parts.append(optax.adamw(schedule, b1=train_cfg.beta1, b2=train_cfg.beta2, eps=train_cfg.eps,
                           weight_decay=train_cfg.weight_decay))
  return optax.chain(*parts), schedule


def make_split_optimizer(train_cfg, rates: dict[str, float], label_fn) -> tuple[optax.GradientTransformation, callable]:
  """Adam(W) with one learning rate per parameter group (fine-tuning: the encoder and the head), the schedule of
  `config.train` scaled to each group's rate; `label_fn(params) -> tree of group names` (a group not in `rates`,
  e.g. 'frozen', is not updated at all). Global-norm clipping over all trained groups first. Returns (optimizer,
  the first group's schedule, for logging)."""
  unit = train_cfg.copy_and_resolve_references()
  unit.lr = 1.0  # the schedule's shape; each group scales it by its rate
  shape = make_schedule(unit)
  scale = lambda rate: (lambda count: shape(count) * rate)
  transforms = {name: optax.adamw(scale(rates[name]), b1=train_cfg.beta1, b2=train_cfg.beta2, eps=train_cfg.eps,
                                  weight_decay=train_cfg.weight_decay) for name in rates}
  transforms["frozen"] = optax.set_to_zero()
  parts = []
  if train_cfg.clip_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(train_cfg.clip_grad_norm))
  parts.append(optax.multi_transform(transforms, label_fn))
  return optax.chain(*parts), scale(next(iter(rates.values())))


def parse_lambda(text: str | float | int, name: str = "lambda"):
  """A loss weight: a constant ('1') or a piecewise-linear schedule over steps ('0:1,10000:0.1,30000:0').

  Returns a function of the (traced) step. Beyond the last point the last value holds.
  """
  text = str(text).strip()
  try:
    if ":" not in text:
      value = float(text)
      return lambda step: jnp.asarray(value, jnp.float32)
    points = [tuple(float(v) for v in p.split(":")) for p in text.split(",") if p.strip()]
  except ValueError:
    raise UserError(f"{name}={text!r} is neither a number nor a schedule like '0:1,10000:0.1'.") from None
  steps = np.array([p[0] for p in points], np.float32)
  values = np.array([p[1] for p in points], np.float32)
  if any(len(p) != 2 for p in points) or steps[0] != 0 or (np.diff(steps) <= 0).any():
    raise UserError(f"{name}={text!r}: a schedule is 'step:value' pairs with increasing steps starting at 0.")
  return lambda step: jnp.interp(jnp.asarray(step, jnp.float32), steps, values)
