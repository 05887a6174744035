"""Named hardware topologies and fake devices of them: meshes and plans without the hardware.

A topology is slices x hosts x chips, the physical grid of one slice (TPU: the chips' coords),
memory and peak FLOP/s per chip. `fake_devices` returns objects with the attributes jax's mesh
utilities read (id, process_index, slice_index, platform, device_kind, coords, core_on_chip), so
`parallel.make_mesh` lays out a v5e-256 or a 4-node GPU cluster exactly as it would on the
hardware, on a laptop.
"""

import dataclasses
import itertools

from plm_jax.errors import ConfigError

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Topology:
  platform: str                  # "tpu" or "gpu" (or "cpu" for --devices N)
  device_kind: str               # as jax reports it
  slices: int                    # TPU slices / GPU nodes joined by DCN
  hosts_per_slice: int           # processes (one per host VM / node) in a slice
  chips_per_host: int
  grid: tuple[int, int, int]     # physical chip grid of one slice (TPU coords)
  hbm_bytes: float               # memory per chip
  peak_flops: float              # dense bf16 FLOP/s per chip

  @property
  def num_devices(self) -> int:
    return self.slices * self.hosts_per_slice * self.chips_per_host

  @property
  def num_processes(self) -> int:
    return self.slices * self.hosts_per_slice


def _tpu(kind, chips, grid, hbm_gib, peak, slices=1):
  return Topology("tpu", kind, slices, max(1, chips // 4), min(4, chips), grid, hbm_gib * GIB,
                  peak)


def _gpu(kind, nodes, per_node, hbm_gib, peak):
  return Topology("gpu", kind, nodes, 1, per_node, (per_node, 1, 1), hbm_gib * GIB, peak)


TOPOLOGIES = {
    "v4-8": _tpu("TPU v4", 4, (2, 2, 1), 32, 275e12),
    "v4-32": _tpu("TPU v4", 16, (2, 2, 4), 32, 275e12),
    "v5e-16": _tpu("TPU v5 lite", 16, (4, 4, 1), 16, 197e12),
    "v5e-256": _tpu("TPU v5 lite", 256, (16, 16, 1), 16, 197e12),
    "2xv5e-256": _tpu("TPU v5 lite", 256, (16, 16, 1), 16, 197e12, slices=2),
    "v5p-128": _tpu("TPU v5", 64, (4, 4, 4), 95, 459e12),   # v5p-128: 64 chips, 128 cores
    "1xh100": _gpu("NVIDIA H100 80GB HBM3", 1, 1, 80, 989e12),
    "8xh100": _gpu("NVIDIA H100 80GB HBM3", 1, 8, 80, 989e12),
    "4x8xh100": _gpu("NVIDIA H100 80GB HBM3", 4, 8, 80, 989e12),
    "1xh200": _gpu("NVIDIA H200", 1, 1, 141, 989e12),
    "8xh200": _gpu("NVIDIA H200", 1, 8, 141, 989e12),
    "8xa100": _gpu("NVIDIA A100-SXM4-80GB", 1, 8, 80, 312e12),
}


def get(name: str) -> Topology:
  if name not in TOPOLOGIES:
    raise ConfigError(f"--topology {name!r} is not one of {', '.join(sorted(TOPOLOGIES))}; or "
                      "give --devices N")
  return TOPOLOGIES[name]


def generic(num_devices: int, hbm_gib: float = 0.0, peak_flops: float = 0.0) -> Topology:
  """N devices of one host, of unknown kind (memory / speed only if given)."""
  return Topology("cpu", "generic", 1, 1, num_devices, (num_devices, 1, 1), hbm_gib * GIB,
                  peak_flops)


@dataclasses.dataclass(frozen=True)
class FakeDevice:
  id: int
  process_index: int
  slice_index: int
  platform: str
  device_kind: str
  coords: tuple[int, int, int]
  core_on_chip: int = 0

  def __repr__(self) -> str:
    return f"FakeDevice(id={self.id}, slice={self.slice_index}, process={self.process_index})"


def fake_devices(t: Topology) -> list[FakeDevice]:
  """The devices of `t` in jax.devices() order: by slice, then host, then chip."""
  devices = []
  per_slice = t.hosts_per_slice * t.chips_per_host
  for s in range(t.slices):
    if t.platform == "tpu":
      # Hosts own 2x2 blocks of chips (x, y), as on Cloud TPU; z planes stack the blocks.
      gx, gy, gz = t.grid
      coords = sorted(itertools.product(range(gx), range(gy), range(gz)),
                      key=lambda c: (c[2], c[1] // 2, c[0] // 2, c[1], c[0]))
    else:
      coords = [(i, 0, 0) for i in range(per_slice)]
    for i, c in enumerate(coords):
      host = s * t.hosts_per_slice + i // t.chips_per_host
      devices.append(FakeDevice(len(devices), host, s, t.platform, t.device_kind, c))
  return devices
