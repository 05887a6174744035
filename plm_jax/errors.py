"""Errors a user can act on.

Everything the user can get wrong (config, mesh, data, workdir) raises a subclass of
`PlmJaxError` whose message names the problem and a fix. The CLI prints the message alone,
without a traceback from deep inside jax.
"""


class PlmJaxError(Exception):
  """Base class of every error meant for the user rather than for a developer."""


class ConfigError(PlmJaxError):
  """A config field holds a value that cannot work (named in the message)."""


class DataError(PlmJaxError):
  """The input data is missing, empty or unreadable."""


class CheckpointError(PlmJaxError):
  """The workdir's checkpoints are missing, corrupt or belong to a different model."""
