"""The shape of the code: layers import only downwards, no import hides in a function, and no
module but the family registry tells families apart by name."""

import ast
import fnmatch
import pathlib

import pytest

from helpers import ROOT

PACKAGE = pathlib.Path(ROOT) / "plm_jax"
CONFIGS = pathlib.Path(ROOT) / "plm_jax" / "configs"      # the packaged presets

# Low to high: a module imports only modules of its own layer or below (and no cycles within
# a layer). A new module must be placed here.
LAYERS = [
    # 0: facts that need nothing (plm_jax.configs: where the packaged presets lie; the
    # packages' own __init__ files)
    ("plm_jax", "plm_jax.errors", "plm_jax.hardware", "plm_jax.hardware.mesh_presets",
     "plm_jax.configs", "plm_jax.sizing", "plm_jax.commands"),
    # 1: the runtime (devices, processes, topologies, console) and the logical axes
    ("plm_jax.hardware.distributed", "plm_jax.hardware.topology",
     "plm_jax.hardware.accelerator", "plm_jax.run", "plm_jax.run.metrics_writer",
     "plm_jax.models.partitioning", "plm_jax.run.lock", "plm_jax.run.watchdog",
     "plm_jax.run.stopping", "plm_jax.run.supervisor", "plm_jax.run.plots",
     "plm_jax.run.trackers"),
    # 2: models, objectives, reading and tokenising text, pure tables and formulas (each
    # fine-tuning kind's metrics)
    ("plm_jax.models", "plm_jax.models.*", "plm_jax.objectives", "plm_jax.objectives.*",
     "plm_jax.data", "plm_jax.data.tokenizer", "plm_jax.data.compact", "plm_jax.data.sources",
     "plm_jax.data.examples", "plm_jax.data.builtin_corpus", "plm_jax.data.builtin_tasks",
     "plm_jax.hardware.flops", "plm_jax.hardware.hlo_stats", "plm_jax.hf", "plm_jax.hf.tables",
     "plm_jax.optim", "plm_jax.finetune", "plm_jax.finetune.classify", "plm_jax.finetune.tag",
     "plm_jax.finetune.qa", "plm_jax.finetune.seq2seq", "plm_jax.finetune.*.metrics"),
    # 3: the family registry
    ("plm_jax.families",),
    # 4: configs, the kinds' task tables, the data pipeline and loader, the mesh
    ("plm_jax.configlib", "plm_jax.finetune.*.tasks", "plm_jax.data.pipeline",
     "plm_jax.data.loader", "plm_jax.data.phases", "plm_jax.parallel"),
    # 5: the checks pass, checkpoints, the workdir, the kinds' data
    ("plm_jax.checks", "plm_jax.run.checkpoint", "plm_jax.workdir", "plm_jax.finetune.*.data"),
    # 6: the trainer, Hugging Face interop, what autodiff keeps for the backward pass
    ("plm_jax.trainer", "plm_jax.hf.convert", "plm_jax.sizing.residuals"),
    # 7: the run scaffold, restoring, a run's data, sizing a config to a parameter count
    ("plm_jax.run.scaffold", "plm_jax.inference", "plm_jax.run.data",
     "plm_jax.sizing.param_match"),
    # 8: the fine-tuning run every kind shares, then each kind's run
    ("plm_jax.finetune.predict", "plm_jax.finetune.run"),
    ("plm_jax.finetune.*.run",),
    # 10: the kind registry
    ("plm_jax.finetune.kinds",),
    # 11: the commands' library functions
    ("plm_jax.commands.*", "plm_jax.sizing.aot", "plm_jax.sizing.plan", "plm_jax.sizing.bench",
     "plm_jax.hf.workdir", "plm_jax.compare", "plm_jax.compare.*"),
    # 12: entry points
    ("plm_jax.cli", "plm_jax.launch_local"),
    # 13: the packaged presets (config files: they import the config layer and below only,
    # see test_configs_import_only_the_config_layer; the CLI finds them by path)
    ("plm_jax.configs.*",),
]
CONFIG_LAYER = 4         # configs/*.py import the config layer and below only
# Imports allowed inside functions: optional dependencies, absent from a plain install.
OPTIONAL = ("tensorflow_datasets", "torch", "wandb", "mlflow")
FAMILY_NAMES = {"bert", "roberta", "albert", "gpt", "gpt2", "xlnet"}
# Only the registry and the Hugging Face tables spell family names (configs name their own).
NAMES_FAMILIES = {"plm_jax.families", "plm_jax.hf.tables"}     # and the presets, plm_jax.configs.*


def module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def layer_of(name: str) -> int:
  for i, layer in enumerate(LAYERS):
    for pattern in layer:
      if fnmatch.fnmatchcase(name, pattern):
        return i
  raise AssertionError(f"{name} has no layer in tests/test_house.py LAYERS: place it there")


def modules() -> dict[str, ast.Module]:
  return {module_name(p): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


def imported(tree: ast.Module, known: set[str]) -> set[str]:
  """The plm_jax modules a module imports (`from plm_jax import x` imports plm_jax.x)."""
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names if a.name.startswith("plm_jax")}
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("plm_jax"):
      for a in node.names:
        full = f"{node.module}.{a.name}"
        out.add(full if full in known else node.module)
  return out


def test_every_module_has_a_layer():
  for name in modules():
    layer_of(name)


def test_the_package_root_holds_a_dozen_modules_at_most():
  """New code goes in the folder of its layer (hardware/, sizing/, commands/, run/, ...)."""
  root = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
  assert len(root) <= 12, root


def test_every_import_points_down_the_layers():
  trees = modules()
  known = set(trees)
  upward = []
  for name, tree in trees.items():
    for target in imported(tree, known):
      if layer_of(target) > layer_of(name):
        upward.append(f"{name} (layer {layer_of(name)}) imports {target} "
                      f"(layer {layer_of(target)})")
  assert upward == []


def test_no_import_cycle():
  trees = modules()
  graph = {name: imported(tree, set(trees)) - {name} for name, tree in trees.items()}
  state: dict[str, int] = {}

  def visit(node, path):
    state[node] = 1
    for nxt in graph.get(node, ()):
      if state.get(nxt) == 1:
        raise AssertionError(f"import cycle: {' -> '.join(path + [nxt])}")
      if nxt not in state:
        visit(nxt, path + [nxt])
    state[node] = 2

  for name in graph:
    if name not in state:
      visit(name, [name])


def test_configs_import_only_the_config_layer():
  for path in sorted(CONFIGS.glob("*.py")):
    for target in imported(ast.parse(path.read_text()), set(modules())):
      assert layer_of(target) <= CONFIG_LAYER, f"{path.name} imports {target}"


def test_imports_inside_functions_are_optional_dependencies_only():
  hidden = []
  for name, tree in modules().items():
    for fn in ast.walk(tree):
      if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
        continue
      for node in ast.walk(fn):
        if isinstance(node, ast.Import):
          names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
          names = [node.module or ""]
        else:
          continue
        hidden += [f"{name}.{fn.name}: {n}" for n in names if n.split(".")[0] not in OPTIONAL]
  assert hidden == []


def test_only_the_registry_tells_families_apart():
  named = []
  for name, tree in modules().items():
    if name in NAMES_FAMILIES or name.startswith("plm_jax.configs."):
      continue
    for node in ast.walk(tree):
      if isinstance(node, ast.Constant) and node.value in FAMILY_NAMES:
        named.append(f"{name}:{node.lineno}: {node.value!r}")
  assert named == []


@pytest.mark.parametrize("family", ["bert", "roberta", "albert", "gpt", "xlnet"])
def test_size_tables_have_a_tiny_row_and_no_branches(family):
  """Each family's config is a table (a `tiny` row among the published sizes), read without
  `if ... else` expressions."""
  path = CONFIGS / f"{family}.py"
  tree = ast.parse(path.read_text())
  assert not [n for n in ast.walk(tree) if isinstance(n, (ast.IfExp, ast.If))]
  namespace: dict = {}
  exec(compile(tree, str(path), "exec"), namespace)  # noqa: S102 - our own config file
  assert "tiny" in namespace["SIZES"] and len(namespace["SIZES"]) > 1
  config = namespace["get_config"]("tiny")
  assert config.model.hidden_size == namespace["SIZES"]["tiny"]["model"]["hidden_size"]


KIND_NAMES = {"classify", "tag", "qa", "seq2seq"}
# Kind names are spelt by the kinds' registry and their own folders (plm_jax/finetune/), the
# objectives' table (a kind's loss, batch and head: plm_jax/objectives/) and the config layer's
# table of their groups (plm_jax/configlib.py, KINDS); the presets name their own.
NAMES_KINDS = ("plm_jax.finetune.kinds", "plm_jax.finetune.*", "plm_jax.objectives.*",
               "plm_jax.configlib", "plm_jax.configs.*")
# Modules that still tell kinds apart by name, to be emptied.
STILL_NAMING_KINDS: set[str] = set()
# The same words meaning something else: bench's JSON "tag" labels an A/B run
# (launch/bench_vs_reference.sh).
NOT_KINDS = {("plm_jax.sizing.bench", "tag")}
# Where an objective's name may be compared with a constant: the registries.
COMPARES_OBJECTIVES = ("plm_jax.objectives.*", "plm_jax.families", "plm_jax.finetune.kinds")


def _names_kinds(name: str, tree: ast.Module) -> list[str]:
  return [f"{name}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
          if isinstance(node, ast.Constant) and node.value in KIND_NAMES
          and (name, node.value) not in NOT_KINDS]


def test_only_the_kind_registry_and_the_kinds_tell_kinds_apart():
  named = []
  for name, tree in modules().items():
    if any(fnmatch.fnmatchcase(name, p) for p in NAMES_KINDS) or name in STILL_NAMING_KINDS:
      continue
    named += _names_kinds(name, tree)
  assert named == []


def test_the_list_of_modules_still_naming_kinds_only_shrinks():
  trees = modules()
  assert [n for n in sorted(STILL_NAMING_KINDS) if not _names_kinds(n, trees[n])] == []


def _objective_name(node) -> bool:
  """`<...>.objective.name` (or `["objective"]["name"]`)."""
  if isinstance(node, ast.Attribute) and node.attr == "name":
    inner = node.value
    return isinstance(inner, ast.Attribute) and inner.attr == "objective"
  return False


def test_no_module_compares_an_objective_name_outside_the_registries():
  """Objectives and kinds are told apart by asking their table (objectives.of(config)...,
  configlib.KINDS, finetune/kinds.py), never by `config.objective.name == "..."`."""
  found = []
  for name, tree in modules().items():
    if any(fnmatch.fnmatchcase(name, p) for p in COMPARES_OBJECTIVES):
      continue
    for node in ast.walk(tree):
      if isinstance(node, ast.Compare):
        sides = [node.left, *node.comparators]
        if any(_objective_name(x) for x in sides) and any(
            isinstance(x, (ast.Constant, ast.Tuple, ast.Set, ast.List)) for x in sides):
          found.append(f"{name}:{node.lineno}")
  assert found == []


def folder_of(name: str) -> str:
  """plm_jax.finetune.tag.run -> plm_jax.finetune.tag; a root module is its own folder."""
  path = pathlib.Path(ROOT, *name.split("."))
  return name if path.is_dir() else name.rsplit(".", 1)[0]


def test_no_folder_imports_a_folder_that_imports_it():
  """Folders follow the layers: between two folders, imports go one way only."""
  trees = modules()
  edges = set()
  for name, tree in trees.items():
    for target in imported(tree, set(trees)):
      a, b = folder_of(name), folder_of(target)
      if a != b and not b.startswith(a + ".") and not a.startswith(b + "."):
        edges.add((a, b))
  both = sorted(f"{a} <-> {b}" for a, b in edges if (b, a) in edges and a < b)
  assert both == []
