"""compare's budget: every family's pretraining config with the comparison's shared corpus,
vocabulary, batch and length, what a step of it costs (parameters, FLOPs, tokens), and
the steps (and, matching parameters, the width) each family gets for the matched budget. FLOPs
are counted as each family's step computes them (plm_jax/hardware/flops.py)."""

from plm_jax import configs as presets, families
from plm_jax.data import loader
from plm_jax.hardware.flops import computed_flops_per_step
from plm_jax.models.config import padded_vocab
from plm_jax.sizing.param_match import count_params, match_width, with_width
from plm_jax.sizing.plan import plan
from plm_jax.run.metrics_writer import console

MATCHES = ("flops", "tokens", "params")
UNITS = {"flops": "FLOPs as computed", "tokens": "tokens", "params": "parameters"}


def uses_reference(c) -> bool:
  """Whether the budget comes from reference_family: without a budget of its own, and always
  matching parameters (the tokens every family trains on are the reference's)."""
  return c.budget <= 0 or c.match == "params"


def pretrain_config(c, family: str, seed: int, steps: int = 1, hidden: int = 0):
  """The family's preset with the comparison's shared corpus, vocabulary, batch and length
  (and, hidden > 0, the width that matches the parameter budget)."""
  config = presets.load(f"{family}:{c.sizes[family]},mesh={c.mesh}")
  p = c.pretrain
  with config.unlocked():
    config.data.source = c.corpus
    config.data.path = c.corpus_path
    config.data.text_field = c.corpus_text_field
    config.data.tfds_name = c.corpus_tfds_name
    config.data.tfds_split = c.corpus_tfds_split
    config.data.vocab_size = p.vocab_size
    config.data.max_seq_length = p.max_seq_length
    config.data.phase2_seq_length = 0        # one length for every family (the budget's)
    config.data.dupe_factor = 1
    config.model.max_position = max(config.model.max_position, p.max_seq_length)
    config.train.batch_size = p.batch_size
    config.train.eval_steps = p.eval_steps
    config.train.log_every = p.log_every
    config.train.seed = seed
    config.train.steps = steps
    config.optim.warmup_steps = min(config.optim.warmup_steps, max(1, steps // 10))
    # a shorter sequence than the preset's leaves less room for XLNet's reused memory
    config.objective.reuse_len = min(config.objective.reuse_len, p.max_seq_length // 2)
    if p.learning_rate > 0:
      config.optim.learning_rate = p.learning_rate
  return with_width(config, hidden) if hidden else config


def family_config(c, costs: dict, family: str, seed: int):
  """The family's pretraining config with its budgeted steps (and matched width)."""
  cost = costs[family]
  return pretrain_config(c, family, seed, cost["steps"], cost.get("hidden", 0))


def step_cost(config) -> dict:
  """Parameters, FLOPs per step as the step computes them (plm_jax/hardware/flops.py: one convention for
  every family, the one `plan` and `bench`'s MFU as computed use), the references' model FLOPs
  (for comparing with published figures), and tokens per step of a pretraining config (the
  configured vocabulary, padded)."""
  vocab = padded_vocab(config, config.data.vocab_size)
  n_params = count_params(config)
  m = config.model
  reference = families.get(m.family).flops_per_token(
      n_params, vocab=vocab, hidden=m.hidden_size, layers=m.num_layers,
      seq_len=config.data.max_seq_length, max_position=m.max_position)
  tokens = config.train.batch_size * config.data.max_seq_length * loader.segments_per_row(config)
  step = computed_flops_per_step(loader.step_shape(config, vocab))
  return {"params": n_params, "flops_per_token": step / tokens, "tokens_per_step": tokens,
          "step_flops": step, "reference_flops_per_token": float(reference),
          "hidden_size": m.hidden_size}


def steps_for(budget: float, per_step: float) -> int:
  return max(1, int(round(budget / per_step)))


def plan_budget(c) -> tuple[float, dict]:
  """(budget, {family: cost with "steps"}): every family's steps for the matched budget (and,
  matching parameters, its width: "hidden")."""
  reference = step_cost(pretrain_config(c, c.reference_family, 0)) if uses_reference(c) \
      else None
  widths = {}
  if c.match == "params":
    budget = c.budget if c.budget > 0 else float(reference["params"])
    widths = {f: match_width(pretrain_config(c, f, 0), int(budget))[0] for f in c.families}
  costs = {f: step_cost(pretrain_config(c, f, 0, hidden=widths.get(f, 0)))
           for f in c.families}
  unit = "step_flops" if c.match == "flops" else "tokens_per_step"
  spend = c.budget if c.budget > 0 and c.match != "params" else \
      reference[unit] * c.reference_steps
  for family, cost in costs.items():
    if family in widths:
      cost["hidden"] = widths[family]
    cost["steps"] = steps_for(spend, cost[unit])
    cost["flops"] = cost["steps"] * cost["step_flops"]
    cost["tokens"] = cost["steps"] * cost["tokens_per_step"]
  return (budget if c.match == "params" else spend), costs


def estimate(c, costs: dict) -> float | None:
  """Prints `plan`'s memory and step time of every family's pretraining on c.topology, and
  the pretraining time of the whole comparison; returns it in seconds (None if unknown)."""
  total = 0.0
  for family, cost in costs.items():
    p = plan(family_config(c, costs, family, c.seeds[0]), c.topology)
    if p["step_time_s"] is None:
      total = None
      continue
    hours = p["step_time_s"] * cost["steps"] * len(c.seeds) / 3600
    console(f"compare: {family}: {cost['steps']} steps x {len(c.seeds)} seeds at "
            f"{p['step_time_s']:.3g} s/step on {c.topology}: {hours:.2f} h of pretraining")
    if total is not None:
      total += hours * 3600
  if total is not None:
    console(f"compare: plan's estimate of the pretraining on {c.topology} (MFU 0.4): "
            f"{total / 3600:.2f} h, fine-tuning not counted")
  return total
