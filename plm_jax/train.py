"""Train state, the sharded train and eval steps, and the training loop.

The state is a plain pytree {"step", "params", "opt_state"} whose params are the pure-dict form
of the model's nnx.Param state; the model's structure (graphdef) is static. The train step is a
pure function compiled once, ahead of time, with explicit NamedShardings and donated state.
"""

import dataclasses
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from plm_jax import checkpoint, distributed, models, objectives, parallel
from plm_jax.data import loader, pipeline
from plm_jax.data.tokenizer import TextTokenizer
from plm_jax.errors import CheckpointError
from plm_jax.metrics_writer import MetricsWriter, console, format_duration, format_metrics
from plm_jax.models.partitioning import axis_rules
from plm_jax.optim import lr_factors, make_optimizer


def padded_vocab(config, tokenizer_vocab: int) -> int:
  size = config.model.vocab_size or tokenizer_vocab
  multiple = max(1, config.model.vocab_pad_multiple)
  return -(-size // multiple) * multiple


def model_config(config, vocab_size: int, pad_token_id: int = 0) -> models.ModelConfig:
  m = config.model
  return models.ModelConfig(
      family=m.family, vocab_size=vocab_size, hidden_size=m.hidden_size,
      num_layers=m.num_layers, num_heads=m.num_heads, mlp_dim=m.mlp_dim,
      max_position=m.max_position, type_vocab_size=m.type_vocab_size,
      dropout_rate=m.dropout_rate, attention_dropout_rate=m.attention_dropout_rate,
      layer_norm_eps=m.layer_norm_eps, initializer_range=m.initializer_range,
      attention_impl=m.attention_impl, dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat,
      nsp_head=config.objective.name in ("mlm_nsp", "mlm_sop"),
      embedding_size=m.embedding_size, shared_layers=m.shared_layers, hidden_act=m.hidden_act,
      position_offset=m.position_offset, pad_token_id=pad_token_id,
      num_labels=config.classify.num_classes if config.objective.name == "classify" else 0)


@dataclasses.dataclass
class AbstractState:
  """The train state's shapes and PartitionSpecs, without a mesh or any memory (also what
  `plm-jax plan` sizes)."""

  model_cfg: models.ModelConfig
  graphdef: object
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule
  state: dict          # {"step", "params", "opt_state"} of jax.ShapeDtypeStruct
  specs: dict          # the same tree of PartitionSpec

  @classmethod
  def of(cls, config, vocab_size: int, pad_token_id: int = 0) -> "AbstractState":
    mcfg = model_config(config, vocab_size, pad_token_id)
    rules = parallel.rules_dict(config)
    abstract_model = nnx.eval_shape(lambda: models.build(mcfg, nnx.Rngs(0)))
    graphdef, abstract_params = nnx.split(abstract_model, nnx.Param)
    param_specs = nnx.to_pure_dict(parallel.param_specs(abstract_params, rules))
    optimizer, schedule = make_optimizer(config.optim, config.train.steps,
                                         _lr_factors(config, abstract_params))
    state = jax.eval_shape(lambda key: _init_state(mcfg, optimizer, key), jax.random.key(0))
    opt_specs = optax.tree_map_params(
        optimizer, lambda _, spec: spec, state["opt_state"], param_specs,
        transform_non_params=lambda _: jax.sharding.PartitionSpec(),
        is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    specs = {"step": jax.sharding.PartitionSpec(), "params": param_specs, "opt_state": opt_specs}
    return cls(mcfg, graphdef, optimizer, schedule, state, specs)


@dataclasses.dataclass
class Trainer:
  """Everything compiled steps need, built abstractly (no parameters allocated)."""

  config: object
  mesh: jax.sharding.Mesh
  model_cfg: models.ModelConfig
  graphdef: object
  objective: object
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule
  abstract_state: dict
  state_shardings: dict
  batch_shardings: dict

  @classmethod
  def create(cls, config, mesh, vocab_size: int, pad_token_id: int = 0) -> "Trainer":
    a = AbstractState.of(config, vocab_size, pad_token_id)
    mcfg, graphdef, optimizer, schedule, abstract_state, specs = (
        a.model_cfg, a.graphdef, a.optimizer, a.schedule, a.state, a.specs)
    shapes = loader.batch_shapes(config)
    batch_shardings = {k: parallel.batch_sharding(mesh, len(s)) for k, (s, _) in shapes.items()}
    return cls(config, mesh, mcfg, graphdef, objectives.for_config(config), optimizer,
               schedule, abstract_state, parallel.named(mesh, specs), batch_shardings)

  # --- state -----------------------------------------------------------------------------------
  def init_state(self, seed: int) -> dict:
    """Initialises the parameters directly into their shards (never whole on one device)."""
    init = jax.jit(lambda key: _init_state(self.model_cfg, self.optimizer, key),
                   out_shardings=self.state_shardings)
    with axis_rules(parallel.rules_dict(self.config), self.mesh):
      return init(jax.random.key(seed))

  def state_from_params(self, params, step: int = 0) -> dict:
    """A train state at `step` around given parameters (an imported model, a pretrained body
    with a new head), placed on their shards, with a fresh optimizer state."""
    params = jax.device_put(params, self.state_shardings["params"])
    opt_state = jax.jit(self.optimizer.init,
                        out_shardings=self.state_shardings["opt_state"])(params)
    return {"step": jax.device_put(jnp.asarray(step, jnp.int32), self.state_shardings["step"]),
            "params": params, "opt_state": opt_state}

  def restore_state(self, manager, step: int) -> tuple[dict, dict]:
    """(train state, checkpoint meta) of a checkpoint, onto this trainer's shardings."""
    restored = checkpoint.restore(manager, step, self.abstract_state, self.state_shardings)
    meta = restored.pop("meta", {})
    return {"step": jax.device_put(jnp.asarray(step, jnp.int32), self.state_shardings["step"]),
            **restored}, meta

  def model(self, params) -> nnx.Module:
    return nnx.merge(self.graphdef, params)

  # --- steps -----------------------------------------------------------------------------------
  def train_step_fn(self) -> Callable:
    config, objective, graphdef = self.config, self.objective, self.graphdef
    rules, mesh, accum = parallel.rules_dict(config), self.mesh, config.optim.grad_accum_steps
    seed, optimizer, schedule = config.train.seed, self.optimizer, self.schedule
    prng_impl = config.train.prng_impl
    batch_shardings = self.batch_shardings

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
        new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state}
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
    return jitted.lower(abstract_state, abstract_batch).compile()

  def eval_step(self):
    objective, graphdef = self.objective, self.graphdef
    rules, mesh = parallel.rules_dict(self.config), self.mesh

    def step(params, batch):
      with axis_rules(rules, mesh):
        return objective.stats(nnx.merge(graphdef, params), batch, dropout_rng=None)

    return jax.jit(step, in_shardings=(self.state_shardings["params"], self.batch_shardings),
                   out_shardings=parallel.replicated(self.mesh))


def _lr_factors(config, abstract_params):
  """Fine-tuning's layer-wise decay and head learning rate (None when both are off)."""
  if config.objective.name != "classify":
    return None
  k, lr = config.classify, config.optim.learning_rate
  head = k.head_learning_rate / lr if k.head_learning_rate > 0 and lr > 0 else 1.0
  if k.layer_decay == 1.0 and head == 1.0:
    return None
  return lr_factors(nnx.to_pure_dict(abstract_params), config.model.num_layers,
                    config.model.shared_layers, k.layer_decay, head)


def _init_state(mcfg, optimizer, key) -> dict:
  model = models.build(mcfg, nnx.Rngs(params=key))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  return {"step": jnp.zeros((), jnp.int32), "params": params,
          "opt_state": optimizer.init(params)}


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


# --- the loop -------------------------------------------------------------------------------------

TRAIN_KEYS = ("loss", "mlm_loss", "mlm_accuracy", "nsp_accuracy", "sop_accuracy", "perplexity",
              "learning_rate")
EVAL_KEYS = ("loss", "mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy", "sop_loss",
             "sop_accuracy", "lm_loss", "perplexity", "lm_accuracy")


def prepare_workdir(config, workdir: str) -> tuple[int | None, TextTokenizer | None]:
  """Checks an existing workdir belongs to this model; returns (latest step, saved tokenizer).

  Nothing is written here: a refused run leaves the workdir exactly as it was.
  """
  step = checkpoint.latest_step(workdir)
  config_path = os.path.join(workdir, checkpoint.CONFIG_FILE)
  if step is None and not os.path.exists(config_path):
    return None, None
  if os.path.exists(config_path):
    diffs = checkpoint.identity_mismatches(checkpoint.load_config(workdir), config)
    if diffs:
      raise CheckpointError(
          f"--workdir {workdir!r} holds a checkpoint of a different model ({'; '.join(diffs)}); "
          "use a fresh --workdir, or the config it was trained with")
  elif step is not None:
    raise CheckpointError(f"--workdir {workdir!r} has checkpoints but no {checkpoint.CONFIG_FILE};"
                          " it was not written by plm-jax train: use a fresh --workdir")
  tokenizer = None
  if os.path.exists(os.path.join(workdir, "tokenizer.json")):
    tokenizer = TextTokenizer.load(workdir)
  return step, tokenizer


def setup_mesh(config, devices=None):
  """Validates `config` against `devices` (default: all) and builds its mesh."""
  devices = jax.devices() if devices is None else list(devices)
  return parallel.mesh_for(config, devices)


def load_data(config, tokenizer: TextTokenizer | None = None) -> pipeline.PreparedData:
  """Prepared data (data.prepared) or the sources tokenised now; prints the summary."""
  t0 = time.time()
  if config.data.prepared:
    data = pipeline.load_prepared(config, config.data.prepared)
    same = tokenizer is None or (tokenizer.tokenizer.get_vocab()
                                 == data.tokenizer.tokenizer.get_vocab())
    if not same:
      raise CheckpointError(f"data.prepared={config.data.prepared!r} was tokenised with another "
                            "vocabulary than the workdir's tokenizer.json; use the same one")
  else:
    data = pipeline.prepare_in_memory(config, tokenizer)
  s = data.stats
  console(f"data: {', '.join(data.descriptions)}: {s.documents:,} documents, {s.tokens:,} tokens "
          f"-> {s.examples:,} train / {s.eval_examples:,} eval {data.builder} examples of "
          f"{config.data.max_seq_length} tokens; vocab {data.tokenizer.vocab_size:,}; skipped: "
          f"{s.empty_documents} empty, {s.bad_records} bad records, {s.undecodable_documents} "
          f"with undecodable bytes; {time.time() - t0:.1f}s")
  return data


def train(config, workdir: str, devices=None) -> dict:
  """Pretrains (or resumes) the model of `config` in `workdir`; returns the final eval metrics.

  `devices` restricts the mesh to some of the devices (tests compare meshes in one process).
  """
  mesh = setup_mesh(config, devices)
  resume_step, saved_tokenizer = prepare_workdir(config, workdir)
  # Every process resumes from the step process 0 found (a shared filesystem may lag).
  resume_step = distributed.agree(resume_step)
  data = load_data(config, saved_tokenizer)
  tokenizer = data.tokenizer
  vocab = padded_vocab(config, tokenizer.vocab_size)
  trainer = Trainer.create(config, mesh, vocab, tokenizer.pad_id)
  train_batches = loader.Batches(config, data, loader.TRAIN, mesh=mesh)
  eval_batches = loader.Batches(config, data, loader.EVAL, mesh=mesh)

  manager = checkpoint.make_manager(workdir, keep=config.checkpoint.keep,
                                    async_save=config.checkpoint.async_save)
  meta: dict = {}
  if resume_step is not None:
    try:
      state, meta = trainer.restore_state(manager, resume_step)
    except CheckpointError:
      manager.close()
      raise
    console(f"resumed from step {resume_step} in {checkpoint.checkpoint_dir(workdir)}")
  else:
    state = trainer.init_state(config.train.seed)
  # Only now, with the checkpoint (if any) read back, is the workdir written to.
  checkpoint.save_config(workdir, config)
  if jax.process_index() == 0 and saved_tokenizer is None:
    tokenizer.save(workdir)

  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trainer.abstract_state["params"]))
  console(f"model: {config.model.family} {config.model.size}, {n_params / 1e6:.2f}M parameters; "
          f"mesh {dict(mesh.shape)} over {mesh.devices.size} {jax.devices()[0].platform} "
          "device(s)")
  t0 = time.time()
  train_step = trainer.compile_train_step()
  console(f"compiled the train step in {time.time() - t0:.1f}s")

  writer = MetricsWriter(workdir)
  # The loader's position is saved with every checkpoint: a resumed run continues with the very
  # batch an uninterrupted run would have seen next.
  data_state = meta.get("data_iterator") or {"next_index": int(state["step"])}
  batches = train_batches.iterator(data_state)
  def on_eval(state, step):
    metrics = evaluate_params(trainer, state["params"], eval_batches,
                              eval_batches.eval_steps(config.train.eval_steps))
    writer.write(step, "eval", metrics)
    console(f"eval @ step {step}: {format_metrics(metrics, EVAL_KEYS)}")

  try:
    state = run_loop(config, trainer, train_step, state, int(meta.get("tokens_seen", 0)), batches,
                     manager, writer, on_eval)
    eval_steps = eval_batches.eval_steps(config.train.eval_steps)
    final = evaluate_params(trainer, state["params"], eval_batches, eval_steps)
    end_step = int(state["step"])
    writer.write(end_step, "eval", final)
    console(f"eval @ step {end_step}: {format_metrics(final, EVAL_KEYS)}")
  finally:
    batches.close()
    manager.wait_until_finished()
    manager.close()
    writer.close()
  return final


def run_loop(config, trainer, train_step, state, tokens_seen, batches, manager, writer,
             on_eval: Callable, train_keys: tuple[str, ...] = TRAIN_KEYS) -> dict:
  """Steps from the state's step to train.steps: logs every log_every steps, checkpoints every
  checkpoint.every (with the loader's position), and calls
  `on_eval(state, step)` every train.eval_every steps (not at the last: the caller evaluates)."""
  total = config.train.steps
  start = int(state["step"])
  log_every, ckpt_every = max(1, config.train.log_every), config.checkpoint.every
  eval_every = config.train.eval_every
  pending, waited, t_last, s_last = [], 0.0, time.time(), start
  for step in range(start, total):
    t_wait = time.perf_counter()
    local = next(batches)        # prepared by background threads while the last step ran
    waited += time.perf_counter() - t_wait
    state, metrics = train_step(state, loader.to_global(local, trainer.batch_shardings))
    pending.append(metrics)
    done = step + 1
    if done % log_every == 0 or done == total:
      # The only place the host waits for the device: fetching the metrics of the interval.
      fetched = jax.device_get(pending)
      now = time.time()
      steps = max(done - s_last, 1)
      interval_tokens = float(np.sum([m["tokens"] for m in fetched]))
      tokens_seen += int(interval_tokens)
      mean = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[-1] if k != "tokens"}
      mean["tokens_per_s"] = interval_tokens / max(now - t_last, 1e-9)
      mean["step_time_s"] = (now - t_last) / steps
      mean["data_wait_s"] = waited / steps
      mean["tokens_seen"] = tokens_seen
      writer.write(done, "train", mean)
      eta = (total - done) * mean["step_time_s"]
      console(f"step {done}/{total} | {format_metrics(mean, train_keys)} | "
              f"{mean['tokens_per_s']:,.0f} tok/s | data wait {mean['data_wait_s'] * 1e3:.1f} "
              f"ms/step | ETA {format_duration(eta)}")
      pending, waited, t_last, s_last = [], 0.0, time.time(), done
    if done % ckpt_every == 0 or done == total:
      # Steps since the last log are not yet in tokens_seen: count them for the checkpoint.
      unlogged = int(np.sum(jax.device_get([m["tokens"] for m in pending]))) if pending else 0
      checkpoint.save(manager, done, state, {"tokens_seen": tokens_seen + unlogged,
                                             "data_iterator": batches.get_state()})
    if eval_every and done % eval_every == 0 and done != total:
      on_eval(state, done)
  if start >= total:
    console(f"nothing to do: the workdir's checkpoint is at step {start} >= train.steps={total}")
  return state
