"""What a compiled program holds, read from its optimised HLO text: collectives and kernels.

`collectives` counts each collective by kind, as many times as it runs in one call of the
program: an op inside a while loop (the scanned layers, gradient accumulation) counts once per
iteration, from the loop's `known_trip_count` that XLA records. Its bytes are the size of the
op's result on one device (for an all-gather the gathered array, for a reduce-scatter the
scattered shard), summed over the runs. Asynchronous pairs (`all-gather-start` / `-done`) count
once, at their start. XLA's TPU compiler emits a reduce-scatter as an `all-reduce-scatter`
fusion (an all-reduce and the slice of this device's shard, fused): it counts as a
reduce-scatter of the fusion's result. `mosaic_kernels` counts the Mosaic (Pallas on TPU) custom calls: splash
attention lowered for a TPU shows up there, its interpreter does not.
"""

import re

import numpy as np

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")

_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%?[\w.\-]+\s*=\s*(.+?)\s([a-z][\w\-]*)\((.*)$")
_CALLED = re.compile(r"\b(body|condition|calls|to_apply|branch_computations)="
                     r"(?:\{([^}]*)\}|%?([\w.\-]+))")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_FUSED_REDUCE_SCATTER = "all-reduce-scatter"
_CONDITION = re.compile(r"\bcondition=%?([\w.\-]+)")
_CONSTANT = re.compile(r"\bs32\[\]\S*\s+constant\((\d+)\)")
_ARRAY = re.compile(r"\b(pred|s4|u4|s8|u8|s16|u16|s32|u32|s64|u64|f16|bf16|f32|f64|c64|c128|"
                    r"f8e4m3fn|f8e5m2)\[([\d,]*)\]")
_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "s32": 4,
          "u32": 4, "s64": 8, "u64": 8, "f16": 2, "bf16": 2, "f32": 4, "f64": 8, "c64": 8,
          "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1}


def shape_bytes(shape_text: str) -> int:
  """Bytes of an HLO shape: an array `bf16[8,128]{1,0}` or the sum of a tuple's arrays."""
  total = 0.0
  for dtype, dims in _ARRAY.findall(shape_text):
    total += _BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d], dtype=np.int64))
  return int(total)


def _computations(hlo: str) -> tuple[dict[str, list[str]], str]:
  """{computation name: its instruction lines}, and the entry computation's name."""
  blocks: dict[str, list[str]] = {}
  entry, current = "", None
  for line in hlo.splitlines():
    if current is None:
      m = _COMPUTATION.match(line)
      if m and "=" not in line.split("{")[0].split("(")[0]:
        current = m.group(2)
        blocks[current] = []
        if m.group(1):
          entry = current
    elif line.strip() == "}":
      current = None
    else:
      blocks[current].append(line)
  return blocks, entry


def _callees(line: str) -> list[tuple[str, bool]]:
  """[(computation, is the body or condition of a while loop)] that an instruction calls."""
  out = []
  for m in _CALLED.finditer(line):
    names = m.group(2).split(",") if m.group(2) is not None else [m.group(3)]
    out += [(n.strip().lstrip("%"), m.group(1) in ("body", "condition")) for n in names if n]
  return out


def _trip_count(line: str, blocks: dict[str, list[str]]) -> int:
  """Iterations of a while loop: XLA's known_trip_count where it kept one, else the bound of a
  counted loop's condition (`i < N`, i from 0, as lax.scan and fori_loop lower), else 1."""
  known = _TRIP.search(line)
  if known:
    return int(known.group(1))
  condition = _CONDITION.search(line)
  lines = blocks.get(condition.group(1), []) if condition else []
  bounds = [int(c) for l in lines for c in _CONSTANT.findall(l)]
  counted = any("compare(" in l and "direction=LT" in l for l in lines)
  return bounds[0] if counted and len(bounds) == 1 else 1


def _runs(blocks: dict[str, list[str]], entry: str) -> dict[str, int]:
  """How many times each computation runs per call of the entry one: a while loop's body as
  many times as it iterates."""
  runs: dict[str, int] = {}

  def visit(name: str, times: int, depth: int) -> None:
    if name not in blocks or depth > 64:
      return
    runs[name] = runs.get(name, 0) + times
    for line in blocks[name]:
      callees = _callees(line)
      trip = _trip_count(line, blocks) if " while(" in line else 1
      for callee, loop in callees:
        visit(callee, times * (trip if loop else 1), depth + 1)

  visit(entry, 1, 0)
  return runs


def collectives(hlo: str) -> dict[str, dict[str, int]]:
  """{kind: {"count": runs per call, "bytes": result bytes per device per call}} of every kind in
  KINDS (zeros where the program has none)."""
  blocks, entry = _computations(hlo)
  runs = _runs(blocks, entry)
  out = {kind: {"count": 0, "bytes": 0} for kind in KINDS}
  for name, lines in blocks.items():
    times = runs.get(name, 0)
    if not times or name.startswith(_FUSED_REDUCE_SCATTER):
      continue                         # counted at the fusion that calls it
    for line in lines:
      m = _INSTRUCTION.match(line)
      if not m:
        continue
      shape, op = m.group(2), m.group(3)
      kind = op[:-len("-start")] if op.endswith("-start") else op
      if op == "fusion" and f"calls=%{_FUSED_REDUCE_SCATTER}" in line:
        kind = "reduce-scatter"
      if kind not in out:
        continue
      if op.endswith("-start"):
        # the start's result is (operand, result[, scratch...]); the transfer is the result
        parts = _ARRAY.findall(shape)
        shape = "{}[{}]".format(*parts[1]) if len(parts) > 1 else shape
      out[kind]["count"] += times
      out[kind]["bytes"] += times * shape_bytes(shape)
  return out


def mosaic_kernels(hlo: str) -> int:
  """Mosaic custom calls (Pallas kernels lowered for a TPU) in the program's text."""
  return len(re.findall(r'custom_call_target="tpu_custom_call"', hlo))
