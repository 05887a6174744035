"""Mesh presets: `--config configs/bert.py:base,mesh=NAME`, then --config.mesh.<field>=N.

They ship inside the package, so an installed plm-jax needs no checkout beside it.

Each preset gives the ICI sizes (within one slice / node: fast links) of the three mesh axes
data, fsdp and tensor, and optionally DCN sizes (across slices / nodes: slow links); an axis's
size is ICI x DCN. -1 (ICI only) means "the devices of a slice / node the other axes leave".
`topology` names the hardware of plm_jax/hardware/topology.py the preset is meant for: the tests build
every preset's mesh from fake devices of that topology, and `plm-jax plan --topology` uses it.

Rules of thumb: FSDP within a slice or node (its all-gathers want fast links), data parallelism
across slices / nodes (one gradient all-reduce per step crosses the slow links), tensor
parallelism only within a node and only when the model is too wide for FSDP alone.
"""

PRESETS = {
    # Whatever is present: FSDP over all devices (one CPU, one GPU, one host).
    "auto": dict(ici=dict(data=1, fsdp=-1, tensor=1)),
    "single": dict(ici=dict(data=1, fsdp=1, tensor=1)),
    "dp": dict(ici=dict(data=-1, fsdp=1, tensor=1)),
    # GPUs.
    "gpu1": dict(ici=dict(data=1, fsdp=1, tensor=1), topology="1xh100"),
    "gpu8": dict(ici=dict(data=1, fsdp=8, tensor=1), topology="8xh100"),
    "gpu8-tp2": dict(ici=dict(data=1, fsdp=4, tensor=2), topology="8xh100"),
    # 4 nodes x 8 H100: FSDP over NVLink within a node, data parallel over InfiniBand.
    "gpu-4x8": dict(ici=dict(data=1, fsdp=8, tensor=1), dcn=dict(data=4, fsdp=1, tensor=1),
                    topology="4x8xh100"),
    # Cloud TPU slices (one process per host VM, 4 chips per host).
    "tpu-v4-8": dict(ici=dict(data=1, fsdp=4, tensor=1), topology="v4-8"),
    "tpu-v4-32": dict(ici=dict(data=1, fsdp=16, tensor=1), topology="v4-32"),
    "tpu-v5e-16": dict(ici=dict(data=1, fsdp=16, tensor=1), topology="v5e-16"),
    "tpu-v5e-256": dict(ici=dict(data=16, fsdp=16, tensor=1), topology="v5e-256"),
    "tpu-v5p-128": dict(ici=dict(data=1, fsdp=64, tensor=1), topology="v5p-128"),
    # Two v5e-256 slices (multi-slice): each slice as tpu-v5e-256, data parallel across them.
    "tpu-2xv5e-256": dict(ici=dict(data=16, fsdp=16, tensor=1),
                          dcn=dict(data=2, fsdp=1, tensor=1), topology="2xv5e-256"),
}


def for_topology(name: str) -> str:
  """The mesh a config sized for topology `name` runs with: the preset for it whose axes span
  slices / nodes (DCN sizes), if one is; else "auto" (FSDP over one host's or slice's
  devices)."""
  spanning = [p for p, v in PRESETS.items() if v.get("topology") == name and "dcn" in v]
  return spanning[0] if spanning else "auto"
