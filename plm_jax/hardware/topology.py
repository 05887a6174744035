"""Named hardware topologies and devices of them: meshes, plans and compiles without the hardware.

A topology is slices x hosts x chips, the physical grid of one slice (TPU: the chips' coords),
memory and peak FLOP/s per chip. TPU topologies are named as Cloud TPU names them (`v5p-128`:
64 chips, 128 TensorCores; `v5e-16` / `v6e-8`: 16 / 8 chips of one core each; `2xv5e-256`: two
slices). Two kinds of stand-in devices:

- `fake_devices` returns objects with the attributes jax's mesh utilities read (id,
  process_index, slice_index, platform, device_kind, coords, core_on_chip), so
  `parallel.make_mesh` lays out a v5e-256 or a 4-node GPU cluster exactly as it would on the
  hardware, on a laptop (`plm-jax plan`);
- `compile_only_devices` asks XLA's TPU compiler in libtpu (`pip install 'jax[tpu]'`, no TPU
  needed) for the topology's devices, for which `jax.jit(...).lower(...).compile()` compiles the
  real program ahead of time on any host (`plm-jax bench --compile-only --topology`, `plm-jax
  plan --compile`; MaxText's train_compile does the same). GPUs have no such compiler outside a
  GPU.
"""

import dataclasses
import glob
import importlib.util
import itertools
import os

import jax
from jax.experimental import topologies

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
  # TPUs: the topology as libtpu's compiler names it (`v5p:4x4x4`), each host's block of chips,
  # and the torus wrap-around links of a full slice (as MaxText's accelerator_to_spec_map)
  compile_name: str = ""
  host_bounds: tuple[int, int, int] = (2, 2, 1)
  wrap: tuple[bool, bool, bool] = (False, False, False)

  @property
  def num_devices(self) -> int:
    return self.slices * self.hosts_per_slice * self.chips_per_host

  @property
  def num_processes(self) -> int:
    return self.slices * self.hosts_per_slice


def _tpu(kind, chips, grid, hbm_gib, peak, compile_name, slices=1, per_host=4,
         wrap=(False, False, False)):
  return Topology("tpu", kind, slices, max(1, chips // per_host), min(per_host, chips), grid,
                  hbm_gib * GIB, peak, compile_name,
                  (2, 2, 1) if per_host == 4 else (2, per_host // 2, 1), wrap)


# Per chip: HBM and dense bf16 peak from Cloud TPU's datasheets (v4 32 GiB, 275 TF; v5e 16 GiB,
# 197 TF; v5p 95 GiB, 459 TF; v6e Trillium 32 GiB, 918 TF).
V4 = dict(kind="TPU v4", hbm_gib=32, peak=275e12)
V5E = dict(kind="TPU v5 lite", hbm_gib=16, peak=197e12)
V5P = dict(kind="TPU v5", hbm_gib=95, peak=459e12)
V6E = dict(kind="TPU v6 lite", hbm_gib=32, peak=918e12)
TORUS = (True, True, True)


def _gpu(kind, nodes, per_node, hbm_gib, peak):
  return Topology("gpu", kind, nodes, 1, per_node, (per_node, 1, 1), hbm_gib * GIB, peak)


TOPOLOGIES = {
    # v4 and v5p name TensorCores (2 per chip, one megacore device); v5e and v6e name chips.
    "v4-8": _tpu(chips=4, grid=(2, 2, 1), compile_name="v4:2x2x1", **V4),
    "v4-32": _tpu(chips=16, grid=(2, 2, 4), compile_name="v4:2x2x4", **V4),
    "v5e-8": _tpu(chips=8, grid=(2, 4, 1), compile_name="v5e:2x4", per_host=8, **V5E),
    "v5e-16": _tpu(chips=16, grid=(4, 4, 1), compile_name="v5e:4x4", **V5E),
    "v5e-256": _tpu(chips=256, grid=(16, 16, 1), compile_name="v5e:16x16",
                    wrap=(True, True, False), **V5E),
    "2xv5e-256": _tpu(chips=256, grid=(16, 16, 1), compile_name="v5e:16x16", slices=2,
                      wrap=(True, True, False), **V5E),
    "v5p-8": _tpu(chips=4, grid=(2, 2, 1), compile_name="v5p:2x2x1", **V5P),
    "v5p-32": _tpu(chips=16, grid=(2, 2, 4), compile_name="v5p:2x2x4", **V5P),
    "v5p-128": _tpu(chips=64, grid=(4, 4, 4), compile_name="v5p:4x4x4", wrap=TORUS, **V5P),
    "v6e-8": _tpu(chips=8, grid=(2, 4, 1), compile_name="v6e:2x4", per_host=8, **V6E),
    "v6e-256": _tpu(chips=256, grid=(16, 16, 1), compile_name="v6e:16x16",
                    wrap=(True, True, False), **V6E),
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


def get_compilable(name: str) -> Topology:
  """A topology XLA can compile for on this host: a TPU one (GPUs need a GPU to compile for)."""
  t = get(name)
  if t.platform != "tpu":
    raise ConfigError(f"--topology {name!r} is a GPU topology: compiling for GPUs needs a GPU "
                      "(XLA's GPU compiler runs against the device), so here plan's estimate "
                      "stands alone (plm-jax plan without --compile); or name a TPU topology: "
                      + ", ".join(n for n, v in TOPOLOGIES.items() if v.platform == "tpu"))
  return t


def compile_only_devices(t: Topology) -> list:
  """The devices of TPU topology `t` as libtpu's compiler sees them, in jax.devices() order:
  jit can lower and compile for them on any host; nothing can run on them."""
  if importlib.util.find_spec("libtpu") is None:
    raise ConfigError("compiling for a TPU topology needs XLA's TPU compiler (libtpu), which "
                      "is not installed: pip install 'jax[tpu]==" + _jax_version() + "' (or "
                      "plm-jax's extra: pip install 'plm-jax[tpu]')")
  quiet_libtpu()
  try:
    description = topologies.get_topology_desc(
        platform="tpu", topology_name=t.compile_name, num_slices=t.slices,
        chips_per_host_bounds=t.host_bounds, wrap=t.wrap,
        chip_config_name="megacore" if t.device_kind in ("TPU v4", "TPU v5") else "default")
  except jax.errors.JaxRuntimeError as e:
    raise ConfigError(f"libtpu could not describe {t.compile_name}: "
                      f"{str(e).splitlines()[0][:300]}") from None
  devices = list(description.devices)
  if len(devices) != t.num_devices:
    raise ConfigError(f"libtpu made {len(devices)} devices of {t.compile_name} where "
                      f"{t.num_devices} were expected; this libtpu does not lay it out as "
                      "Cloud TPU does")
  return devices


def quiet_libtpu() -> None:
  """Off a TPU VM, libtpu (installed for compiling) looks for the VM's TPU at start-up, queries
  a metadata server and prints a page of warnings before it carries on, and takes a lock file
  that stops a second process on the host (a second compile, a test worker) from loading it;
  these answer it (before jax starts a backend). On a TPU VM nothing is set."""
  if _on_tpu_vm():
    return
  for k, v in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_WORKER_HOSTNAMES", "localhost"),
               ("TPU_ACCELERATOR_TYPE", "v5p-8"), ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")):
    os.environ.setdefault(k, v)


def _on_tpu_vm() -> bool:
  return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def _jax_version() -> str:
  return jax.__version__


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
