"""Comparing the families at matched compute (`plm-jax compare`). `--config compare:SETUP`.

Each selected family is pretrained from its own preset (`sizes`: the family's SIZE argument) on
the same corpus, with the same vocabulary size, batch and sequence length (`pretrain`), for as
many steps as `match` allows: the same FLOPs as each family's step computes them
(plm_jax/hardware/flops.py's one convention for every family, as `plan` and `bench` count them), the same tokens, or the same parameter count (each family's width
sized to it, all trained on the same tokens). The budget is `budget` (FLOPs, tokens or
parameters), or when 0 what `reference_family` has or spends in `reference_steps` steps. Every
family then fine-tunes, with the same seeds, on the downstream tasks it can do:

- `classify.tasks`: classification (plm_jax/finetune/classify/tasks.py's names, e.g. sst2, or `word_order`);
- `qa.tasks`: extractive question answering, encoders only (qa_tasks.py's, e.g. squad, or
  `cloze`);
- `generate.tasks`: generation, decoders only (gen_tasks.py's, e.g. xsum, or `unshuffle`).

A task of your own is one per kind, from files: `<kind>.own.name` (its name in the report),
`own.train_path` (`eval_path`, `test_path`) and its fields (`classify.own.text_field`,
`text_pair_field`, `label_field` of CSV or JSON lines; SQuAD-format JSON for `qa`; the
`generate.own.source_field` and `target_field` of JSON lines). The pretraining corpus is `corpus`
(builtin | text | jsonl | tfds) with `corpus_path` (a glob), `corpus_text_field` or
`corpus_tfds_name` / `corpus_tfds_split`: the data fields of `train`. A missing file or field
is one line before anything runs.

`word_order`, `cloze` and `unshuffle` need no download: the command writes them from the
built-in corpus (plm_jax/data/builtin_tasks.py) into DIR/tasks/. A stage's `steps` > 0 fixes
its steps, 0 runs `epochs` of its data.

Tokenizers: each family trains its own kind (WordPiece, byte-level BPE, Unigram: the special
tokens and pair layouts its pretraining objective expects) on the same corpus with the same
vocabulary size; one tokenizer for all would change what e.g. RoBERTa or XLNet is.

`tiny` runs all five families and every stage on 2 CPU cores in about 14 minutes; `smoke` is
two families and a handful of steps (CI); `base` is sized for one H100/H200 (`topology`: plan's
estimate is printed first) and times each family with `bench`.
"""

import ml_collections

from plm_jax.configlib import parse_arg

FAMILIES = ["bert", "roberta", "albert", "gpt", "xlnet"]
_TINY_STAGE = dict(steps=250, epochs=3.0, batch_size=16, max_seq_length=64, learning_rate=5e-4)
_SMOKE_STAGE = dict(steps=2, epochs=3.0, batch_size=8, max_seq_length=64, learning_rate=1e-3)
_BASE_STAGE = dict(steps=0, epochs=3.0, batch_size=32, max_seq_length=128, learning_rate=2e-5)
# not SIZES: these are setups of a comparison, not model sizes (plan sizes every SIZES row)
SETUPS = {
    "tiny": dict(families=FAMILIES, size="tiny", seeds=[0, 1], reference_steps=500,
                 pretrain=dict(batch_size=16, max_seq_length=64, vocab_size=2048, eval_steps=4,
                               log_every=25),
                 classify=dict(_TINY_STAGE, tasks=["word_order"]),
                 qa=dict(_TINY_STAGE, tasks=["cloze"], max_seq_length=128, learning_rate=1e-3,
                         max_query_length=48, doc_stride=64),
                 # only GPT generates: two runs, so longer ones (copying words in a new
                 # order is learned late: 250 steps at 5e-4 stay below the copy baseline)
                 generate=dict(_TINY_STAGE, tasks=["unshuffle"], steps=1000,
                               learning_rate=1e-3, max_seq_length=96, report_examples=128,
                               max_new_tokens=32),
                 bench="compile", topology="", devices=1),
    "smoke": dict(families=["bert", "gpt"], size="tiny", seeds=[0], reference_steps=3,
                  pretrain=dict(batch_size=8, max_seq_length=32, vocab_size=1024, eval_steps=1,
                                log_every=1),
                  classify=dict(_SMOKE_STAGE, tasks=["word_order"]),
                  qa=dict(_SMOKE_STAGE, tasks=["cloze"], max_query_length=24, doc_stride=32),
                  generate=dict(_SMOKE_STAGE, tasks=["unshuffle"], report_examples=4,
                                max_new_tokens=4),
                  bench="off", topology="", devices=1, task_examples=64),
    "base": dict(families=FAMILIES, size={**{f: "base" for f in FAMILIES}, "gpt": "124m"},
                 # six seeds: Welch's test establishes a difference of twice the spread over
                 # seeds with power 0.8 (five: 0.79; tests/test_compare.py)
                 seeds=[0, 1, 2, 3, 4, 5], reference_steps=100_000,
                 pretrain=dict(batch_size=256, max_seq_length=128, vocab_size=30522,
                               eval_steps=50, log_every=100),
                 classify=dict(_BASE_STAGE, tasks=["sst2", "mrpc", "rte", "word_order"]),
                 qa=dict(_BASE_STAGE, tasks=["squad", "cloze"], max_seq_length=384,
                         learning_rate=3e-5, epochs=2.0, max_query_length=64, doc_stride=128),
                 generate=dict(_BASE_STAGE, tasks=["unshuffle"], learning_rate=1e-4,
                               report_examples=1000, max_new_tokens=64),
                 bench="time", topology="1xh100"),
}


def _own(**fields) -> ml_collections.ConfigDict:
  """A task of the user's own, from files: reported as `name` ("" = none) beside `tasks`."""
  o = ml_collections.ConfigDict()
  o.name = ""
  o.train_path = ""                            # required with a name
  o.eval_path = ""                             # "" = a share of train held out
  o.test_path = ""                             # "" = no test split (ranked on validation)
  o.update(fields)
  return o


def _stage(row: dict, own: dict, **extra) -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.tasks = tuple(row["tasks"])                # () = no such stage
  s.own = _own(**own)
  s.steps = row["steps"]                       # > 0: the steps of every run; 0 = epochs
  s.epochs = row["epochs"]
  s.batch_size = row["batch_size"]
  s.max_seq_length = row["max_seq_length"]
  s.learning_rate = row["learning_rate"]
  s.eval_every = 0                             # 0 = validation at the end only
  for key, default in extra.items():
    setattr(s, key, row.get(key, default))
  return s


def get_config(arg=None):
  a = parse_arg(arg, SETUPS, "tiny", noun="setup")
  row = SETUPS[a["size"]]
  c = ml_collections.ConfigDict()
  c.name = a["size"]
  # tuples, not lists: the command line can set them (--config.families='("bert", "gpt")')
  c.families = tuple(row["families"])          # the order of the report's rows
  # the preset argument each family is pretrained from (its own config file's SIZE)
  c.sizes = (dict(row["size"]) if isinstance(row["size"], dict)
             else {family: row["size"] for family in FAMILIES})
  c.mesh = a["mesh"]
  # devices each run uses (0 = all): many small runs one after another waste less time in
  # compiling for a mesh of one device than of several (the CI smoke runs on one of eight)
  c.devices = row.get("devices", 0)
  c.seeds = tuple(row["seeds"])                # each (family, stage) runs once per seed
  c.match = "flops"                            # flops | tokens | params: what all share
  c.budget = 0.0                               # FLOPs, tokens or parameters; 0 = the reference's
  c.reference_family = "bert"
  c.reference_steps = row["reference_steps"]
  c.corpus = "builtin"                         # data.source of every pretraining run: builtin |
                                               # text | jsonl | tfds
  c.pretrain = ml_collections.ConfigDict(row["pretrain"])
  c.pretrain.learning_rate = 0.0               # 0 = each preset's own
  # the corpus's files (text: a glob of plain text, blank lines between documents; jsonl: a
  # glob of JSON lines, the text in corpus_text_field), or a TFDS dataset: as `train` reads them
  c.corpus_path = ""
  c.corpus_text_field = "text"
  c.corpus_tfds_name = ""
  c.corpus_tfds_split = "train"
  # own: CSV (.csv / .tsv) or JSON lines (.jsonl), a text (and a second text) and a label field
  c.classify = _stage(row["classify"], dict(text_field="text", text_pair_field="",
                                            label_field="label"))
  # own: SQuAD-format JSON files (.json)
  c.qa = _stage(row["qa"], {}, max_query_length=64, doc_stride=128)
  # generation: the best checkpoint by validation loss (decoding during training is slow);
  # the final report decodes report_examples prompts of each split greedily.
  # own: JSON lines (.jsonl) with a prompt and a completion field
  c.generate = _stage(row["generate"], dict(source_field="source", target_field="target"),
                      report_examples=256, max_new_tokens=64)
  # the built-in tasks' first N examples of each split only (0 = all; the CI smoke: 64)
  c.task_examples = row.get("task_examples", 0)
  c.bench = row["bench"]                       # off | compile (memory) | time (+ tokens/s)
  c.topology = row["topology"]                 # plan's estimate before starting ("" = none)
  c.plan_only = False                          # print the estimate (and budget) and stop
  return c
