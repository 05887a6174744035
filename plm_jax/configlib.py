"""The config system: defaults shared by every family, and `size=...,mesh=...` args.

`configs/<family>.py` files hold only what differs per family (a size table whose rows give the
model shape and the data / train / optim values of that size, `tiny` included) and call
`make_config`; the mesh presets are plm_jax/hardware/mesh_presets.py. Every field is commented here, grouped as model / objective / data /
optim / train / checkpoint / mesh / bench. Configs are locked by the CLI, so an override of a
misspelt field is an error.
"""

import dataclasses
from typing import Callable

import ml_collections

from plm_jax import families, objectives
from plm_jax.errors import ConfigError
from plm_jax.finetune.classify.tasks import validate_classify
from plm_jax.finetune.qa.tasks import validate_qa
from plm_jax.finetune.seq2seq.tasks import validate_seq2seq
from plm_jax.finetune.tag.tasks import validate_tag
from plm_jax.hardware.mesh_presets import PRESETS

# Logical axis -> mesh axes. Parameters: "embed" is sharded over fsdp (ZeRO-3 style), the
# "heads"/"mlp"/"vocab" axes over tensor (Megatron style). Activations: the batch over data and
# fsdp; "act_embed" (the hidden size of activations) stays replicated.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("act_embed", None),
    ("heads", "tensor"),
    ("kv", None),
    ("qkv", None),
    ("layers", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("segment", None),
    ("classes", None),
)

def parse_arg(arg: str | None, sizes: dict, default_size: str, noun: str = "size") -> dict:
  """'base,mesh=gpu8' -> {'size': 'base', 'mesh': 'gpu8'}; a bare word is the size (or, with
  noun="task", the task of configs/classify.py)."""
  out = {"size": default_size, "mesh": "auto"}
  for part in filter(None, (arg or "").split(",")):
    key, _, value = part.partition("=")
    if not value:
      key, value = "size", key
    if key not in out:
      raise ConfigError(f"config arg {part!r}: unknown key {key!r}; use {noun}=... and "
                        "mesh=...")
    out[key] = value
  if out["size"] not in sizes:
    raise ConfigError(f"config {noun} {out['size']!r} is not one of {sorted(sizes)}")
  if out["mesh"] not in PRESETS:
    raise ConfigError(f"mesh preset {out['mesh']!r} is not one of {sorted(PRESETS)} "
                      "(plm_jax/hardware/mesh_presets.py)")
  return out


def paper_recipes(sizes: dict, recipes: dict) -> dict:
  """`sizes` plus a `<size>-paper` row for each size in `recipes`: the size's row with the
  published recipe over it. A recipe gives group dicts (data / train / optim) and, under
  "extra", dotted fields of any group ({"model.attention_dropout_rate": 0.1})."""
  out = dict(sizes)
  for size, recipe in recipes.items():
    row = {group: dict(values) if isinstance(values, dict) else values
           for group, values in sizes[size].items()}
    for group, values in recipe.items():
      row[group] = {**row.get(group, {}), **values}
    out[f"{size}-paper"] = row
  return out


def sized_for(target: str, row: dict, accum: int = 1) -> dict:
  """`row` with the hardware it is sized for: `target` names a topology of plm_jax/hardware/topology.py
  (run with the mesh preset mesh_presets.for_topology gives it), and `accum` micro-batches a
  step (optim.grad_accum_steps) make the paper's global batch fit there unchanged. `plm-jax
  plan` accepts every sized row on its target (tests/test_plan.py)."""
  return {**row, "target": target, "optim": {**row.get("optim", {}), "grad_accum_steps": accum}}


def apply_extra(config, row: dict) -> ml_collections.ConfigDict:
  """Sets a size row's "extra" dotted fields ({"objective.max_ngram": 5}) on `config`."""
  for dotted, value in row.get("extra", {}).items():
    node = config
    *path, leaf = dotted.split(".")
    for key in path:
      node = node[key]
    node[leaf] = value
  return config


def make_config(*, family: str, size_name: str, model: dict, mesh: str = "auto",
                objective: str | None = None, data: dict | None = None,
                train: dict | None = None, optim: dict | None = None,
                finetune: dict | None = None, groups: dict | None = None
                ) -> ml_collections.ConfigDict:
  """The full config: `model` gives the shape (hidden_size, num_layers, num_heads, mlp_dim,
  max_position, layer_norm_eps and any family-specific field), `data` / `train` / `optim` /
  `finetune` / `groups` (the kind's own groups by name) the values that differ from the
  defaults below; `objective` defaults to the family's (plm_jax/families.py)."""
  objective = objective or families.get(family).objectives[0]
  c = ml_collections.ConfigDict()
  c.model = model_group(family, size_name, model)
  c.objective = objective_group(objective)
  c.data = data_group(objectives.get(objective).builder, data or {})
  c.optim = optim_group(optim or {})
  c.train = train_group(train or {})
  c.checkpoint = checkpoint_group()
  c.mesh = mesh_group(mesh)
  if objective in KINDS:                      # fine-tuning: the shared group, the kind's own
    c.finetune = finetune_group(finetune or {})
    for group, make in KINDS[objective].groups.items():
      c[group] = make((groups or {}).get(group) or {})
  if objectives.get(objective).permuted:
    # XLNet's own settings, for every XLNet config (its presets and imported models alike):
    # half of each segment reused as memory, spans of up to 5 words, attention dropout
    c.objective.reuse_len = c.data.max_seq_length // 2
    c.objective.max_ngram = 5
    c.model.attention_dropout_rate = 0.1
  c.bench = bench_group()
  return c


def model_group(family: str, size_name: str, size: dict) -> ml_collections.ConfigDict:
  """The architecture (`size`: its shape and family-specific fields) and how it computes."""
  m = ml_collections.ConfigDict()
  m.family = family                  # a family of plm_jax/families.py: "bert", "roberta",
                                     # "albert" (encoders), "xlnet" or "gpt" (decoder)
  m.size = size_name                 # the named size this config started from (informational)
  m.vocab_size = 0                   # embedding rows; 0 = the tokenizer's vocabulary size
  m.vocab_pad_multiple = 128         # pad the embedding table to a multiple (MXU/tensor cores)
  m.hidden_size = size["hidden_size"]
  m.num_layers = size["num_layers"]
  m.num_heads = size["num_heads"]
  m.mlp_dim = size["mlp_dim"]
  m.max_position = size["max_position"]
  m.type_vocab_size = size.get("type_vocab_size", 2)  # segment ids (A/B); RoBERTa 1, GPT unused
  m.dropout_rate = 0.1               # hidden-state dropout (embeddings, residual branches)
  m.attention_dropout_rate = 0.0     # >0 disables the fused attention kernel (see layers.py)
  m.layer_norm_eps = size["layer_norm_eps"]
  m.initializer_range = 0.02         # stddev of the normal initialiser
  m.attention_impl = "auto"          # "auto" (cudnn on NVIDIA GPUs, splash on TPUs, else xla),
                                     # "xla", "cudnn" (the GPU flash kernel) or "splash" (TPU)
  m.dtype = "auto"                   # compute dtype: "auto" (bfloat16 on GPU/TPU, float32 on
                                     # CPU), "float32" or "bfloat16" (plm_jax/hardware/accelerator.py)
  m.param_dtype = "float32"          # storage dtype of parameters and optimizer state
  m.remat = False                    # rematerialise each block in the backward pass
  m.scan_layers = True               # run the layers as one lax.scan: compile time does not
                                     # grow with depth; parameters are the same either way
  m.embedding_size = size.get("embedding_size", 0)    # ALBERT: factorised embedding size E
  m.shared_layers = size.get("shared_layers", False)  # ALBERT: one layer's weights for all
  m.hidden_act = size.get("hidden_act", "gelu")       # encoders: "gelu" or "gelu_new" (tanh)
  m.position_offset = size.get("position_offset", False)  # RoBERTa: positions past padding id
  m.mem_len = size.get("mem_len", 0)  # XLNet: positions of the previous segment kept as memory
  m.clamp_len = size.get("clamp_len", -1)  # XLNet: relative distances clipped (-1: never)
  return m


def objective_group(objective: str) -> ml_collections.ConfigDict:
  o = ml_collections.ConfigDict()
  o.name = objective                 # "mlm_nsp" (BERT), "mlm_sop" (ALBERT), "mlm" (RoBERTa,
                                     # no sentence-pair task), "causal_lm" (GPT), or "classify"
                                     # (fine-tuning: the finetune group and the kind's own),
                                     # "tag", "qa", "seq2seq" (GPT generation); the
                                     # data.builder must build it
  o.mlm_probability = 0.15           # share of non-special tokens chosen for prediction
  o.max_predictions = 0              # at most this many a sequence (ALBERT's reference: 20 of
                                     # 512); 0 = ceil(mlm_probability x max_seq_length)
  o.phase2_max_predictions = 0       # the same in phase 2 (data.phase2_seq_length; BERT's 80 of
                                     # 512); 0 = ceil(mlm_probability x phase2_seq_length)
  o.masking = "token"                # what is chosen: "token" (BERT, RoBERTa), "word" (whole
                                     # words: BERT's whole-word masking) or "ngram" (ALBERT:
                                     # spans of n <= max_ngram words, p(n) ~ 1/n)
  o.max_ngram = 3                    # "ngram" (and XLNet's spans): the longest span, in words
  # XLNet's permutation LM ("plm"), as its data pipeline made examples:
  o.reuse_len = 0                    # leading tokens of each segment kept as the next one's
                                     # memory; they come first in the factorisation order
  o.plm_k = 6                        # partial prediction: the last 1/K of the order (about
                                     # max_seq_length / K tokens a segment) is predicted
  o.plm_segments = 2                 # consecutive segments of one text in an example; memory
                                     # carries from each to the next
  o.span_alpha = 6                   # spans of n words are chosen in contexts of
  o.span_beta = 1                    # n * alpha / beta tokens
  o.loss_chunk = 8192                # tokens per device in each chunk of the output layer's
                                     # cross-entropy (no [B, T, V] float32 tensor); 0 = one chunk
  return o


def data_group(builder: str, values: dict) -> ml_collections.ConfigDict:
  """Where the text comes from and how it becomes examples (plm_jax/data/)."""
  d = ml_collections.ConfigDict()
  d.source = "builtin"               # builtin | text | jsonl | tfds | mixture (data/sources.py)
  d.path = ""                        # text / jsonl: a glob (.gz files are read transparently)
  d.doc_per_file = False             # text: one document per file (else blank lines separate)
  d.text_field = "text"              # jsonl / tfds: the field that holds the text
  d.tfds_name = ""                   # tfds: e.g. "wikipedia/20230601.en", "imdb_reviews"
  d.tfds_split = "train"             # tfds: split, with slicing, e.g. "train[:10%]"
  d.tfds_data_dir = ""               # tfds: data_dir ("" = TFDS's default)
  d.mixture = ""                     # mixture: "text:a/*.txt=0.7;tfds:c4/en@train=0.3"
  d.prepared = ""                    # a directory written by `plm-jax data prepare` (read
                                     # instead of the source)
  d.builder = builder                # nsp | full_sentences (BERT); blocks | packed (GPT)
  d.max_seq_length = 128             # tokens per example
  # A second phase at another length (BERT's: the last 10% of the steps at 512 tokens), in the
  # same run: one optimizer state and one learning-rate schedule over train.steps; only the
  # examples change (plm_jax/data/phases.py). Pretraining only.
  d.phase2_seq_length = 0            # tokens per example from the switch on; 0 = one phase
  d.phase2_from = 0.9                # the switch: this fraction of train.steps, rounded
  d.phase2_prepared = ""             # phase 2's `plm-jax data prepare` directory (made with
                                     # max_seq_length = phase2_seq_length); "" = tokenised from
                                     # the source when the run starts
  d.tokenizer = ""                   # tokenizer.json / vocab.txt / vocab.json(+merges.txt) or a
                                     # dir holding one; "" = train one on the corpus, or reuse
                                     # the one trained on the same documents before (cached in
                                     # $PLM_JAX_CACHE or ~/.cache/plm-jax: HF tokenizers breaks
                                     # ties in hash order, so two trainings differ slightly)
  d.vocab_size = 4096                # size of the tokenizer trained on the corpus
  d.lowercase = True                 # WordPiece: lowercase and strip accents
  d.tokenizer_sample_documents = 200_000   # documents a new tokenizer is trained on
  d.short_seq_prob = 0.1             # BERT: share of examples with a shorter random target
  d.dupe_factor = 5                  # BERT: passes over the corpus with different pairings
  d.eval_fraction = 0.05             # documents held out for evaluation
  d.chunk_documents = 100_000        # documents tokenised (and, prepared, stored) per chunk
  d.prefetch = 4                     # batches prepared ahead of the train step
  d.update(values)
  return d


def optim_group(values: dict) -> ml_collections.ConfigDict:
  """AdamW and its learning-rate schedule (plm_jax/optim.py)."""
  op = ml_collections.ConfigDict()
  op.optimizer = "adamw"             # "adamw", or "lamb" (You et al., 2019; ALBERT's)
  op.learning_rate = 1e-4            # peak learning rate
  op.warmup_steps = 100              # linear warmup from 0
  op.schedule = "linear"             # decay after warmup: "linear" (to 0), "cosine", "constant";
                                     # "linear_total": BERT's own (linear decay counted from 0, so
                                     # the rate after warmup is peak x (1 - warmup / steps))
  op.end_lr_fraction = 0.0           # final lr as a fraction of the peak (linear/cosine)
  op.weight_decay = 0.01             # AdamW decoupled decay (not on biases or LayerNorm)
  op.b1 = 0.9
  op.b2 = 0.999
  op.eps = 1e-6
  op.clip_norm = 1.0                 # global-norm gradient clipping; 0 = off
  op.grad_accum_steps = 1            # micro-batches per step (batch_size is the global total)
  op.phase2_grad_accum_steps = 0     # the same in phase 2 (data.phase2_seq_length: its longer
                                     # sequences may need more); 0 = grad_accum_steps
  op.update(values)
  return op


def train_group(values: dict) -> ml_collections.ConfigDict:
  t = ml_collections.ConfigDict()
  t.steps = 1000                     # optimizer steps
  t.batch_size = 32                  # global batch, all devices and micro-batches together
  t.seed = 0                         # init, data order, masking and dropout all derive from it
  t.prng_impl = "auto"               # dropout rng: "auto" (rbg on GPU/TPU, threefry2x32 on
                                     # CPU), "threefry2x32" (identical on any mesh) or
                                     # "rbg" (much cheaper on GPU/TPU, mesh-dependent bits)
  t.log_every = 50                   # steps between console / TensorBoard / metrics.jsonl lines
                                     # (and always at step 1)
  t.progress_bar = "auto"            # a bar over the steps: "auto" (when stderr is a terminal),
                                     # "on" or "off" (plain lines only)
  t.wandb_project = ""               # Weights & Biases project to log to; "" = off (needs
                                     # pip install 'plm-jax[wandb]')
  t.wandb_entity = ""                # W&B team or user ("" = the account's default)
  t.wandb_mode = "online"            # "online", or "offline": kept in WORKDIR/wandb, uploaded
                                     # later with `wandb sync`
  t.mlflow_tracking_uri = ""         # MLflow tracking server (http://host:5000, databricks,
                                     # file:...); "" = off (pip install 'plm-jax[mlflow]')
  t.mlflow_experiment = "plm-jax"    # the MLflow experiment runs are logged under
  t.eval_every = 0                   # steps between evaluations during training; 0 = at the end
  t.eval_steps = 20                  # eval batches per evaluation (0 = the whole eval split)
  t.nonfinite = "stop"               # a step whose loss or gradient norm is not finite is never
                                     # applied; "stop": the run stops there (checkpoint of the
                                     # last finite state, exit 3); "skip": it goes on, counting
                                     # skipped_steps, and stops after max_consecutive_skips
  t.max_consecutive_skips = 10       # "skip": non-finite steps in a row before it stops
  t.spike_factor = 100.0             # a loss over this many times the running level of the
                                     # losses before it (after 10 steps) counts as non-finite:
                                     # the finite but huge losses of a diverging run; 0 = off
  t.step_timeout_s = 0.0             # watchdog: no progress for this long dumps every thread's
                                     # stack and exits 4; 0 = derived from the measured step
                                     # time (at least 5 minutes; 30 before the first log)
  t.update(values)
  return t


def checkpoint_group() -> ml_collections.ConfigDict:
  ck = ml_collections.ConfigDict()
  ck.every = 500                     # steps between saves (and always at the end)
  ck.keep = 3                        # checkpoints kept (oldest deleted first); 2 at least
                                     # while train.spike_factor is on (scaffold.py)
  ck.every_seconds = 0               # also save when this long has passed since the last save
                                     # (0 = off); several processes decide at log steps
  ck.async_save = True               # save in the background while training continues
  return ck


def mesh_group(mesh: str) -> ml_collections.ConfigDict:
  """The device mesh (plm_jax/parallel.py), from a preset of plm_jax/hardware/mesh_presets.py."""
  ms = ml_collections.ConfigDict()
  ms.preset = mesh                   # the preset the axes below came from (informational)
  preset = PRESETS[mesh]
  ms.update(preset["ici"])           # data, fsdp, tensor: ICI sizes (within a slice / node)
  dcn = preset.get("dcn", {})
  ms.dcn_data = dcn.get("data", 1)   # DCN sizes: across slices (multi-slice TPU) or nodes (GPU
  ms.dcn_fsdp = dcn.get("fsdp", 1)   # clusters); an axis's size is ICI x DCN
  ms.dcn_tensor = dcn.get("tensor", 1)
  ms.rules = DEFAULT_RULES           # logical axis -> mesh axes
  return ms


def bench_group() -> ml_collections.ConfigDict:
  b = ml_collections.ConfigDict()
  b.steps = 10                       # timed steps of `plm-jax bench`
  b.warmup_steps = 2                 # untimed steps after compilation
  return b


def finetune_group(values: dict) -> ml_collections.ConfigDict:
  """What every kind of fine-tuning shares (`plm-jax finetune`): the task, where its data is,
  the metric the best checkpoint is chosen by, and the schedule."""
  f = ml_collections.ConfigDict()
  f.task = ""                        # a task of the kind's table (plm_jax/finetune/<kind>/
                                     # tasks.py: "sst2", "conll2003", "squad", "xsum", ...) or
                                     # a file format ("csv", "jsonl", ...: the files below)
  f.init_from = ""                   # the workdir the body was restored from (set by finetune)
  f.metric = ""                      # the best checkpoint's metric ("" = the task's): one of
                                     # the kind's (accuracy, f1, mcc, exact_match, bleu, ...;
                                     # mse and loss: lower is better)
  f.epochs = 3.0                     # > 0: train.steps = epochs x train examples / batch_size
  f.warmup_fraction = 0.1            # > 0: optim.warmup_steps = this x train.steps
  f.layer_decay = 1.0                # a new head's kinds: layer l of L gets the learning rate
                                     # x decay^(L + 1 - l) (embeddings l = 0); 1 = off
  f.head_learning_rate = 0.0         # a new head's kinds: its peak lr; 0 = optim.learning_rate
  f.tfds_name = ""                   # TFDS dataset ("" = the task's), e.g. "glue/sst2"
  f.tfds_data_dir = ""               # TFDS data_dir ("" = TFDS's default)
  f.train_path = ""                  # local files: the train file
  f.eval_path = ""                   # the validation file ("" = data.eval_fraction of the
                                     # train file, held out)
  f.test_path = ""                   # the test file ("" = no test report)
  f.train_split = ""                 # TFDS splits ("" = the task's)
  f.eval_split = ""
  f.test_split = ""
  f.update(values)
  return f


FINETUNE_FIELDS = tuple(finetune_group({}).keys())


def classify_group(values: dict) -> ml_collections.ConfigDict:
  """Sequence classification (`plm-jax finetune`, configs/classify.py): its labels and fields;
  token tagging's tags are its classes per word (configs/tag.py)."""
  k = ml_collections.ConfigDict()
  k.num_classes = 0                  # outputs; 1 = regression (MSE); 0 = the task's or the data's
  k.label_names = ()                 # class names in id order ("" entries if unknown); () = from
                                     # the task or, for string labels in files, sorted train labels
  k.text_field = ""                  # the column / feature of the text ("" = the task's; csv /
                                     # jsonl: "text")
  k.text_pair_field = ""             # the second text of sentence-pair tasks ("" = the task's /
                                     # none)
  k.label_field = ""                 # the label column ("" = the task's / "label")
  k.update(values)
  return k


def tag_group(values: dict) -> ml_collections.ConfigDict:
  """Token tagging (`plm-jax finetune --config tag:TASK`, configs/tag.py); its tags are the
  classify group's classes."""
  t = ml_collections.ConfigDict()
  t.tag_column = -1                  # the column of the tags in CoNLL files (0 = the word;
                                     # -1 = the last)
  t.update(values)
  return t


def qa_group(values: dict) -> ml_collections.ConfigDict:
  """Extractive question answering (`plm-jax finetune --config qa:TASK`, configs/qa.py); the
  task, schedule and data fields are the finetune group's (plm_jax/finetune/qa/tasks.py)."""
  q = ml_collections.ConfigDict()
  q.max_query_length = 64            # question tokens kept (the rest cut)
  q.doc_stride = 128                 # a context longer than a window is read in windows that
                                     # start this many tokens apart (they overlap)
  q.max_answer_length = 30           # the longest answer predicted, in tokens
  q.n_best = 20                      # start and end candidates per window
  q.null_score_diff_threshold = 0.0  # unanswerable tasks: predict no answer when the null score
                                     # (start + end logit of [CLS]) beats the best span's by more
  q.update(values)
  return q


# --- generation fine-tuning (issue 15) -------------------------------------------------------------

def seq2seq_group(values: dict) -> ml_collections.ConfigDict:
  """Generation fine-tuning of a GPT (`plm-jax finetune --config seq2seq:TASK`); the task
  (plm_jax/finetune/seq2seq/tasks.py: wmt14_de_en, cnn_dailymail, xsum, ... or "jsonl" / "tsv"
  files), its metric (bleu, rouge1, rouge2, rougeL, exact_match, loss) and schedule (epochs
  count packed train rows) are the finetune group's."""
  g = ml_collections.ConfigDict()
  g.source_field = ""                # the field / column of the source ("" = the task's;
                                     # files: "source")
  g.target_field = ""                # of the target ("" = the task's; files: "target")
  g.template = ""                    # the prompt, "{source}" in it ("" = the task's: "{source} ="
                                     # for translation, "{source}\nTL;DR:" for summaries)
  g.target_prefix = "default"        # text put before the target ("default" = the task's: " ")
  g.max_target_length = 0            # target tokens kept (0 = as many as data.max_seq_length
                                     # leaves); the source is cut first
  g.eval_examples = 256              # validation prompts decoded at each evaluation (0 = no
                                     # decoding: the best checkpoint by validation loss)
  g.report_examples = 0              # prompts decoded for the final report and `evaluate`
                                     # (0 = the whole split)
  g.decode = "greedy"                # "greedy", "sample" (temperature, top_k, top_p) or "beam"
  g.beam_size = 4                    # beam: hypotheses kept per prompt
  g.length_penalty = 0.6             # beam: Wu et al. (2016)'s alpha: log p / ((5+n)/6)^alpha
  g.temperature = 1.0                # sample: softmax temperature
  g.top_k = 0                        # sample: the k best tokens only (0 = all)
  g.top_p = 1.0                      # sample: nucleus mass (1 = all)
  g.seed = 0                         # sample: its seed
  g.repetition_penalty = 1.0         # any decode: > 1 makes tokens already in the sequence less
                                     # likely (transformers' repetition_penalty)
  g.no_repeat_ngram_size = 0         # any decode: > 0 no n-gram of this size twice
                                     # (transformers' no_repeat_ngram_size)
  g.max_new_tokens = 64              # tokens generated per prompt at most
  g.decode_batch = 32                # prompts decoded together
  g.update(values)
  return g


@dataclasses.dataclass(frozen=True)
class KindConfig:
  """A kind of fine-tuning as the config layer knows it: its groups beside the finetune group,
  and the check of their values against its task table (plm_jax/finetune/<kind>/tasks.py)."""
  groups: dict[str, Callable]          # group name -> its defaults (with the values given)
  validate: Callable                   # (config) -> None, or a ConfigError naming the fix


# The kinds of fine-tuning by the objective they train (the registry that runs them is
# plm_jax/finetune/kinds.py; their losses, batches and heads are plm_jax/objectives').
KINDS = {"classify": KindConfig({"classify": classify_group}, validate_classify),
         "tag": KindConfig({"classify": classify_group, "tag": tag_group}, validate_tag),
         "qa": KindConfig({"qa": qa_group}, validate_qa),
         "seq2seq": KindConfig({"seq2seq": seq2seq_group}, validate_seq2seq)}
# Fields that moved (a saved workdir's and a command line's old names -> the new group):
# the shared ones from classify and seq2seq to finetune, classify.tag_column to tag.
MOVED = {**{f"classify.{f}": f"finetune.{f}" for f in FINETUNE_FIELDS},
         **{f"seq2seq.{f}": f"finetune.{f}" for f in FINETUNE_FIELDS},
         "classify.tag_column": "tag.tag_column"}


def with_moved_fields(raw: dict) -> dict:
  """A saved config (JSON) with its old fine-tuning fields under their new groups: a workdir
  written before config.finetune existed still resumes, evaluates and exports."""
  kind = KINDS.get(raw.get("objective", {}).get("name"))
  if kind is None or "finetune" in raw:
    return raw
  raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
  for old, new in MOVED.items():
    group, field = old.split(".")
    if field in raw.get(group, {}):
      value = raw[group].pop(field)
      to_group, to_field = new.split(".")
      if to_group in kind.groups or to_group == "finetune":
        raw.setdefault(to_group, {})[to_field] = value
  for group in ("classify", "seq2seq"):          # left empty, or not the kind's (QA's classify)
    if group in raw and group not in kind.groups:
      del raw[group]
  return raw
