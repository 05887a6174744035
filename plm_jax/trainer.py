"""The trainer: train state, the sharded train and eval steps (a library; the commands that
train are plm_jax/commands/pretrain.py and plm_jax/finetune/run.py, the loop is plm_jax/run/scaffold.py).

The state is a plain pytree {"step", "params", "opt_state", "nonfinite_run"} whose params are
the pure-dict form of the model's nnx.Param state; the model's structure (graphdef) is static.
The train step is a pure function compiled once, ahead of time, with explicit NamedShardings and
donated state.

Divergence is handled inside the step, without a host sync: an update whose loss or gradient
norm is not finite, or whose loss spikes over the running level of the losses before it
(train.spike_factor times it; `loss_level` holds that level and the steps it has seen), is
never applied. `nonfinite_run` counts consecutive such steps; past the
allowance (0 for train.nonfinite=stop, train.max_consecutive_skips for skip) the run is halted:
no later update is applied and the step counter stands still, so the state stays the last
finite one until the host, at its next log or save, stops the run (plm_jax/run/scaffold.py).
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from plm_jax import families, objectives, parallel
from plm_jax.hardware import accelerator
from plm_jax.data import loader
from plm_jax.models import kernel_choice
from plm_jax.models.config import ModelConfig
from plm_jax.models.partitioning import axis_rules
from plm_jax.optim import lr_factors, make_optimizer
from plm_jax.run import checkpoint


@dataclasses.dataclass
class AbstractState:
  """The train state's shapes and PartitionSpecs, without a mesh or any memory (also what
  `plm-jax plan` sizes)."""

  model_cfg: ModelConfig
  graphdef: object
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule
  state: dict          # {"step", "params", "opt_state"} of jax.ShapeDtypeStruct
  specs: dict          # the same tree of PartitionSpec

  @classmethod
  def of(cls, config, vocab_size: int, pad_token_id: int = 0) -> "AbstractState":
    mcfg = families.model_config(config, vocab_size, pad_token_id)
    rules = parallel.rules_dict(config)
    abstract_model = nnx.eval_shape(lambda: families.build(mcfg, nnx.Rngs(0)))
    graphdef, abstract_params = nnx.split(abstract_model, nnx.Param)
    param_specs = nnx.to_pure_dict(parallel.param_specs(abstract_params, rules))
    optimizer, schedule = make_optimizer(config.optim, config.train.steps,
                                         _lr_factors(config, abstract_params))
    state = jax.eval_shape(lambda key: _init_state(mcfg, optimizer, key), jax.random.key(0))
    opt_specs = optax.tree_map_params(
        optimizer, lambda _, spec: spec, state["opt_state"], param_specs,
        transform_non_params=lambda _: jax.sharding.PartitionSpec(),
        is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    specs = {"step": jax.sharding.PartitionSpec(), "params": param_specs, "opt_state": opt_specs,
             "nonfinite_run": jax.sharding.PartitionSpec(),
             "loss_level": jax.sharding.PartitionSpec()}
    return cls(mcfg, graphdef, optimizer, schedule, state, specs)


@dataclasses.dataclass
class Trainer:
  """Everything compiled steps need, built abstractly (no parameters allocated)."""

  config: object
  mesh: jax.sharding.Mesh
  model_cfg: ModelConfig
  graphdef: object
  objective: object
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule
  abstract_state: dict
  state_shardings: dict
  batch_shardings: dict
  # what each attention call of the compiled step runs (kernel_choice.summary), once compiled
  attention_kernels: str = ""

  @classmethod
  def create(cls, config, mesh, vocab_size: int, pad_token_id: int = 0) -> "Trainer":
    a = AbstractState.of(config, vocab_size, pad_token_id)
    mcfg, graphdef, optimizer, schedule, abstract_state, specs = (
        a.model_cfg, a.graphdef, a.optimizer, a.schedule, a.state, a.specs)
    shapes = loader.batch_shapes(config)
    batch_shardings = {k: parallel.batch_sharding(mesh, len(s)) for k, (s, _) in shapes.items()}
    return cls(config, mesh, mcfg, graphdef, objectives.for_config(config), optimizer,
               schedule, abstract_state, parallel.named(mesh, specs), batch_shardings)

  @property
  def num_params(self) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.abstract_state["params"]))

  # --- state -----------------------------------------------------------------------------------
  def init_state(self, seed: int) -> dict:
    """Initialises the parameters directly into their shards (never whole on one device)."""
    init = jax.jit(lambda key: _init_state(self.model_cfg, self.optimizer, key),
                   out_shardings=self.state_shardings)
    with axis_rules(parallel.rules_dict(self.config), self.mesh):
      return init(jax.random.key(seed))

  def init_params(self, seed: int) -> dict:
    """New parameters only (e.g. a classification head's), in their shards; no optimizer
    state is built."""
    init = jax.jit(lambda key: _init_params(self.model_cfg, key),
                   out_shardings=self.state_shardings["params"])
    with axis_rules(parallel.rules_dict(self.config), self.mesh):
      return init(jax.random.key(seed))

  def state_from_params(self, params, step: int = 0) -> dict:
    """A train state at `step` around given parameters (an imported model, a pretrained body
    with a new head), placed on their shards, with a fresh optimizer state."""
    params = jax.device_put(params, self.state_shardings["params"])
    opt_state = jax.jit(self.optimizer.init,
                        out_shardings=self.state_shardings["opt_state"])(params)
    return {**self._counters(step), "params": params, "opt_state": opt_state}

  def restore_state(self, manager, step: int) -> tuple[dict, dict]:
    """(train state, checkpoint meta) of a checkpoint, onto this trainer's shardings."""
    restored = checkpoint.restore(manager, step, self.abstract_state, self.state_shardings)
    meta = restored.pop("meta", {})
    return {**self._counters(step), **restored}, meta

  def _counters(self, step: int) -> dict:
    """The step, the count of consecutive non-finite steps and the running loss level (not
    kept in checkpoints: a resumed run measures the level again)."""
    return {"step": jax.device_put(jnp.asarray(step, jnp.int32), self.state_shardings["step"]),
            "nonfinite_run": jax.device_put(jnp.zeros((), jnp.int32),
                                            self.state_shardings["nonfinite_run"]),
            "loss_level": jax.device_put(jnp.zeros((2,), jnp.float32),
                                         self.state_shardings["loss_level"])}

  def model(self, params) -> nnx.Module:
    return nnx.merge(self.graphdef, params)

  # --- steps -----------------------------------------------------------------------------------
  def train_step_fn(self) -> Callable:
    config, objective, graphdef = self.config, self.objective, self.graphdef
    rules, mesh, accum = parallel.rules_dict(config), self.mesh, config.optim.grad_accum_steps
    seed, optimizer, schedule = config.train.seed, self.optimizer, self.schedule
    prng_impl = accelerator.prng_impl(config.train.prng_impl)
    batch_shardings = self.batch_shardings
    allowance = max_nonfinite_run(config)
    spike_factor = config.train.spike_factor

    def train_step(state, batch):
      with axis_rules(rules, mesh):
        step_key = jax.random.fold_in(jax.random.key(seed, impl=prng_impl), state["step"])
        totals = objective.totals(batch)

        def loss_fn(params, micro, key):
          stats = objective.stats(nnx.merge(graphdef, params), micro, dropout_rng=key)
          return objective.loss(stats, totals), stats

        grad_fn = jax.grad(loss_fn, has_aux=True)
        if accum == 1:
          grads, stats = grad_fn(state["params"], batch, step_key)
        else:
          micro_batches = {k: _split_micro(v, accum, batch_shardings[k])
                           for k, v in batch.items()}

          def accumulate(carry, xs):
            index, micro = xs
            g, s = grad_fn(state["params"], micro, jax.random.fold_in(step_key, index))
            return jax.tree.map(jnp.add, carry, (g, s)), None

          zero_stats = jax.eval_shape(lambda: grad_fn(
              state["params"], jax.tree.map(lambda v: v[0], micro_batches), step_key)[1])
          zeros = (jax.tree.map(jnp.zeros_like, state["params"]),
                   jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero_stats))
          (grads, stats), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(accum), micro_batches))
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = objective.metrics(stats)
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["learning_rate"] = schedule(state["step"])
        metrics["tokens"] = jnp.sum(batch["attention_mask"])       # real tokens, all hosts
        # Never apply a non-finite update (nor one whose loss spikes); halt past the allowance
        # (see the module's doc).
        level, seen = state["loss_level"][0], state["loss_level"][1]
        spike = ((spike_factor > 0) & (seen >= SPIKE_WARMUP_STEPS)
                 & (metrics["loss"] > spike_factor * level))
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"]) & ~spike
        before = state["nonfinite_run"]
        run = jnp.where(before > allowance, before, jnp.where(finite, 0, before + 1))
        halted = run > allowance
        apply = finite & ~halted
        keep = lambda new, old: jnp.where(apply, new, old)  # noqa: E731
        metrics["nonfinite"] = (~finite).astype(jnp.float32)
        metrics["halted"] = halted.astype(jnp.float32)
        metrics["spike"] = spike.astype(jnp.float32)
        metrics["loss_level"] = level
        loss = metrics["loss"].astype(jnp.float32)
        updated = jnp.stack([jnp.where(seen > 0, SPIKE_DECAY * level + (1 - SPIKE_DECAY) * loss,
                                       loss), seen + 1])
        new_state = {"step": state["step"] + jnp.where(halted, 0, 1).astype(jnp.int32),
                     "params": jax.tree.map(keep, params, state["params"]),
                     "opt_state": jax.tree.map(keep, opt_state, state["opt_state"]),
                     "nonfinite_run": run,
                     "loss_level": jnp.where(apply, updated, state["loss_level"])}
        return new_state, metrics

    return train_step

  def compile_train_step(self):
    """AOT-compiles the train step once; a batch of another shape is then an error, not a
    silent recompile."""
    replicated = parallel.replicated(self.mesh)
    jitted = jax.jit(self.train_step_fn(),
                     in_shardings=(self.state_shardings, self.batch_shardings),
                     out_shardings=(self.state_shardings, replicated), donate_argnums=0)
    abstract_batch = {k: jax.ShapeDtypeStruct(s, d, sharding=self.batch_shardings[k])
                      for k, (s, d) in loader.batch_shapes(self.config).items()}
    abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                  self.abstract_state, self.state_shardings)
    with kernel_choice.recording() as choices:
      lowered = jitted.lower(abstract_state, abstract_batch)
    self.attention_kernels = kernel_choice.summary(choices)
    return lowered.compile()

  def eval_step(self):
    objective, graphdef = self.objective, self.graphdef
    rules, mesh = parallel.rules_dict(self.config), self.mesh

    def step(params, batch):
      with axis_rules(rules, mesh):
        return objective.stats(nnx.merge(graphdef, params), batch, dropout_rng=None)

    return jax.jit(step, in_shardings=(self.state_shardings["params"], self.batch_shardings),
                   out_shardings=parallel.replicated(self.mesh))


# The running loss level a spike is measured against: an exponential mean of the applied
# steps' losses, trusted once it has seen this many.
SPIKE_DECAY = 0.9
SPIKE_WARMUP_STEPS = 10


def max_nonfinite_run(config) -> int:
  """Consecutive non-finite steps a run may skip before it halts."""
  return config.train.max_consecutive_skips if config.train.nonfinite == "skip" else 0


def _lr_factors(config, abstract_params):
  """Fine-tuning's layer-wise decay and head learning rate (None when both are off)."""
  if objectives.fine_tuned_head(config) is None:
    return None
  ft, lr, m = config.finetune, config.optim.learning_rate, config.model
  head = ft.head_learning_rate / lr if ft.head_learning_rate > 0 and lr > 0 else 1.0
  if ft.layer_decay == 1.0 and head == 1.0:
    return None
  family = families.get(m.family)
  return lr_factors(nnx.to_pure_dict(abstract_params),
                    lambda path: family.layer_depth(path, m.num_layers, m.shared_layers),
                    m.num_layers, ft.layer_decay, head)


def _init_params(mcfg, key) -> dict:
  model = families.build(mcfg, nnx.Rngs(params=key))
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _init_state(mcfg, optimizer, key) -> dict:
  params = _init_params(mcfg, key)
  return {"step": jnp.zeros((), jnp.int32), "params": params,
          "opt_state": optimizer.init(params), "nonfinite_run": jnp.zeros((), jnp.int32),
          "loss_level": jnp.zeros((2,), jnp.float32)}


def _split_micro(x, accum: int, sharding):
  """[B, ...] -> [accum, B/accum, ...] such that every micro-batch is spread over all devices.

  Row r goes to micro-batch r % accum, so each device's contiguous rows feed every micro-batch.
  """
  b = x.shape[0]
  y = x.reshape(b // accum, accum, *x.shape[1:]).swapaxes(0, 1)
  spec = jax.sharding.PartitionSpec(None, *sharding.spec)
  return jax.lax.with_sharding_constraint(y, jax.sharding.NamedSharding(sharding.mesh, spec))


def evaluate_params(trainer: Trainer, params, data: loader.Batches, steps: int) -> dict:
  """Sums loss statistics over `steps` eval batches and turns them into metrics."""
  step_fn = trainer.eval_step()
  total = None
  for i in range(steps):
    stats = step_fn(params, loader.to_global(data.batch(i), trainer.batch_shardings))
    total = stats if total is None else jax.tree.map(jnp.add, total, stats)
  return {k: float(v) for k, v in trainer.objective.metrics(total).items()}
