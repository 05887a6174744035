"""Collectives and kernels read from optimised HLO: counted per run of the program (a loop's
body once per iteration), with the bytes of their results, checked on programs whose
collectives are known by construction."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from plm_jax.hardware.hlo_stats import collectives, mosaic_kernels, shape_bytes

# A hand-written scheduled module in the form XLA's TPU compiler prints: an async all-gather in
# a loop of 3 iterations whose trip count is only in its condition, a reduce-scatter fused as
# all-reduce-scatter, and a Mosaic kernel.
HLO = """HloModule jit_step, entry_computation_layout={()->()}

%cond (p: (s32[], bf16[8,16])) -> pred[] {
  %p = (s32[], bf16[8,16]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %constant.3 = s32[]{:T(128)} constant(3)
  ROOT %lt = pred[] compare(%i, %constant.3), direction=LT
}

%body (p.1: (s32[], bf16[8,16])) -> (s32[], bf16[8,16]) {
  %p.1 = (s32[], bf16[8,16]{1,0}) parameter(0)
  %x = bf16[2,16]{1,0} get-tuple-element(%p.1), index=1
  %all-gather-start.1 = (bf16[2,16]{1,0}, bf16[8,16]{1,0}) all-gather-start(%x), channel_id=1, dimensions={0}
  %all-gather-done.1 = bf16[8,16]{1,0} all-gather-done(%all-gather-start.1)
  %k = f32[4,4]{1,0} custom-call(%x), custom_call_target="tpu_custom_call", backend_config="x"
  ROOT %t = (s32[], bf16[8,16]{1,0}) tuple(%i, %all-gather-done.1)
}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%all-reduce-scatter.clone (input: f32[64]) -> f32[16] {
  %input = f32[64]{0} parameter(0)
  %all-reduce.9 = f32[64]{0} all-reduce(%input), channel_id=2, to_apply=%add
  ROOT %ds = f32[16]{0} dynamic-slice(%all-reduce.9, %input), dynamic_slice_sizes={16}
}

ENTRY %main (arg: bf16[8,16]) -> f32[16] {
  %arg = bf16[8,16]{1,0} parameter(0)
  %w = (s32[], bf16[8,16]{1,0}) while(%tuple), condition=%cond, body=%body
  %g = f32[64]{0} parameter(1)
  %rs = f32[16]{0} fusion(%g), kind=kCustom, calls=%all-reduce-scatter.clone
  %ar = f32[16]{0} all-reduce(%rs), channel_id=3, to_apply=%add
  ROOT %r = f32[16]{0} copy(%ar)
}
"""


def test_shape_bytes_of_arrays_and_tuples():
  assert shape_bytes("bf16[8,128]{1,0:T(8,128)(2,1)}") == 8 * 128 * 2
  assert shape_bytes("(f32[3]{0}, s8[2,2]{1,0}, pred[])") == 12 + 4 + 1
  assert shape_bytes("f32[]") == 4


def test_a_loop_counts_its_body_once_per_iteration_and_fusions_are_reduce_scatters():
  c = collectives(HLO)
  assert c["all-gather"] == {"count": 3, "bytes": 3 * 8 * 16 * 2}     # the gathered result
  assert c["reduce-scatter"] == {"count": 1, "bytes": 16 * 4}          # the scattered shard
  assert c["all-reduce"] == {"count": 1, "bytes": 16 * 4}              # not the fused one
  assert c["all-to-all"] == c["collective-permute"] == {"count": 0, "bytes": 0}
  assert mosaic_kernels(HLO) == 1


def test_a_compiled_program_counts_the_psums_it_runs():
  """On 8 CPU devices: a psum inside a fori_loop of 5 and one outside: 6 all-reduces of
  [4, 32] float32 per call, whatever names and loop forms XLA chose."""
  mesh = Mesh(np.array(jax.devices()[:8]), ("d",))

  @functools.partial(jax.shard_map, mesh=mesh, in_specs=P("d"), out_specs=P("d"),
                     check_vma=False)
  def step(x):
    x = jax.lax.fori_loop(0, 5, lambda i, y: jax.lax.psum(jnp.sin(y) * (i + 1), "d"), x)
    return jax.lax.psum(x * 2, "d")

  x = jax.device_put(jnp.ones((32, 32)), NamedSharding(mesh, P("d")))
  hlo = jax.jit(step).lower(x).compile().as_text()
  c = collectives(hlo)
  assert c["all-reduce"]["count"] == 6
  assert c["all-reduce"]["bytes"] == 6 * 4 * 32 * 4
  assert c["all-gather"]["count"] == 0
