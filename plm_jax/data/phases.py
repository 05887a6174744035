"""Two phases of pretraining in one run (Devlin et al., 2018, appendix A.2: 90% of the steps at
128 tokens, the rest at 512).

Steps before `switch_step` read examples of data.max_seq_length, the steps from it on examples
of data.phase2_seq_length (objective.phase2_max_predictions predictions each); the optimizer
state and the learning-rate schedule run over the whole of train.steps, so only the shape of
the batches changes (the train step is compiled once per phase). Each phase reads a stream of
its own, built at its length; phase 2's counts its elements from the switch. The loader
position a checkpoint keeps is that of the next step's phase, `{"next_index": step,
"next_example": e, "phase": 2}`, so a run resumed in either phase (or before the switch and
going through it) sees exactly the batches an uninterrupted run would.
"""

import copy
from typing import Callable

from plm_jax.data.loader import Batches, Prefetcher


def enabled(config) -> bool:
  return config.data.get("phase2_seq_length", 0) > 0


def switch_step(config) -> int | None:
  """The first step of phase 2 (None: the run has one phase)."""
  if not enabled(config):
    return None
  return int(round(config.data.phase2_from * config.train.steps))


def phase_config(config, phase: int):
  """`config` as the one-phase config of `phase` (1 or 2): phase 2's length, predictions,
  prepared data and micro-batches become data.max_seq_length, objective.max_predictions,
  data.prepared and optim.grad_accum_steps (accumulation is exact: the same step either way)."""
  out = copy.deepcopy(config)
  if phase == 2:
    out.data.max_seq_length = config.data.phase2_seq_length
    out.objective.max_predictions = config.objective.phase2_max_predictions
    out.data.prepared = config.data.phase2_prepared
    out.optim.grad_accum_steps = (config.optim.get("phase2_grad_accum_steps", 0)
                                  or config.optim.grad_accum_steps)
  out.data.phase2_seq_length = 0
  return out


def phase_after(config, done: int) -> int:
  """The phase that trained the state after `done` steps: it is evaluated at that phase's
  length (a finished two-phase run at phase 2's)."""
  switch = switch_step(config)
  return 2 if switch is not None and done > switch else 1


def by_length(steps: dict[int, Callable]) -> Callable:
  """One train step for both phases: the compiled step of the batch's sequence length."""

  def step(state, batch):
    return steps[batch["input_ids"].shape[-1]](state, batch)

  return step


class PhasedBatches:
  """The train batches of a two-phase run, with one position: phase 1's `Batches` before
  `switch`, phase 2's from it (step s of the run is step s - switch of phase 2's stream). It
  answers the run scaffold as a `Batches` does."""

  def __init__(self, first: Batches, second: Batches, switch: int):
    self.phases, self.switch = (first, second), switch
    self.global_batch = first.global_batch
    self.prefetch = first.config.data.prefetch

  def _local(self, step: int) -> tuple[Batches, int, int]:
    """(the phase's batches, the step within its stream, the phase) of run step `step`."""
    if step < self.switch:
      return self.phases[0], step, 1
    return self.phases[1], step - self.switch, 2

  def batch(self, step: int) -> dict:
    batches, local, _ = self._local(step)
    return batches.batch(local)

  def position(self, step: int) -> int:
    """The element of its phase's stream the global batch of `step` starts at."""
    batches, local, _ = self._local(step)
    return batches.position(local)

  def offset(self, step: int) -> int:
    batches, local, _ = self._local(step)
    return batches.offset(local)

  def state_at(self, step: int) -> dict:
    return {"next_index": step, "next_example": self.position(step),
            "phase": self._local(step)[2]}

  def iterator(self, state: dict | None = None) -> Prefetcher:
    """Batches from `state["next_index"]` on. The saved position counts in the stream of the
    phase it names (a state without "phase", saved before phases were configured: phase 1's);
    a phase not yet begun starts its stream at its first element."""
    state = state or {}
    start = int(state.get("next_index", 0))
    saved = int(state.get("phase", 1))
    for phase, batches in enumerate(self.phases, 1):
      first = 0 if phase == 1 else self.switch
      local = max(0, start - first)
      mine = saved == phase and "next_example" in state and start >= first
      batches.resume({"next_index": local,
                      **({"next_example": state["next_example"]} if mine else {})})
    return Prefetcher(self.batch, start, self.prefetch, self.state_at)
