"""The machine: what "auto" means on these devices, TPU topologies and mesh presets,
processes (jax.distributed), peak FLOP/s and the FLOP formulas, what a compiled
program holds (collectives, Mosaic kernels). Imports nothing of plm_jax but errors."""
