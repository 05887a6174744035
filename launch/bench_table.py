"""The table of launch/bench_vs_reference.sh, from the JSON lines of its logs.

  python3 launch/bench_table.py /tmp/plm-jax-bench/*.log

Pairs each plm-jax bench figure with the reference's for the same work (same family, sequence
length and batch), prints work | plm-jax | reference | ratio | target, then the compile times and
the A/B of XLA flags if any. Exit status 1 when a work has no figure on either side.
"""

import json
import sys

# work: (plm-jax family, reference figure, the figure compared, target ratio)
WORKS = (("GPT-2 124M tokens/s", "gpt", "torch_gpt2_124m", "tokens_per_s", 1.4),
         ("BERT-base MLM+NSP seq/s", "bert", "hf_bert_base_pretrain", "seq_per_s", None))
BERT_TARGETS = {128: 2.0, 512: 1.8}
COMPILE_TARGET_S = 15.0


def records(paths: list[str]) -> list[dict]:
  out = []
  for path in paths:
    with open(path, encoding="utf-8", errors="replace") as f:
      for line in f:
        line = line.strip()
        if line.startswith("{"):
          try:
            record = json.loads(line)
          except ValueError:
            continue
          record["_log"] = path
          out.append(record)
  return out


def table(recs: list[dict]) -> tuple[list[str], int]:
  ours = [r for r in recs if r.get("figure") == "plm_jax_bench" and "step_ms" in r
          and not r.get("tag")]
  lines = ["| work | plm-jax | reference | ratio | target |", "| --- | --- | --- | --- | --- |"]
  missing = 0
  for title, family, ref_figure, key, target in WORKS:
    refs = [r for r in recs if r.get("figure") == ref_figure]
    mine = [r for r in ours if r["family"] == family]
    shapes = sorted({(r["T"], r["B"]) for r in refs} | {(r["T"], r["B"]) for r in mine})
    if not shapes:
      lines.append(f"| {title} | missing | missing | - | - |")
      missing += 1
    for t, b in shapes:
      a = next((r[key] for r in mine if (r["T"], r["B"]) == (t, b)), None)
      ref = next((r[key] for r in refs if (r["T"], r["B"]) == (t, b)), None)
      want = target or BERT_TARGETS.get(t)
      ratio = f"{a / ref:.2f}x" if a and ref else "-"
      met = "" if not (a and ref and want) else (" met" if a / ref >= want else " NOT met")
      lines.append(f"| {title}, T={t} B={b} | {a if a is not None else 'missing'} | "
                   f"{ref if ref is not None else 'missing'} | {ratio} | "
                   f"{f'>= {want}x' if want else '-'}{met} |")
      missing += a is None or ref is None
  lines.append("")
  for r in ours:
    mark = "" if r["compile_s"] <= COMPILE_TARGET_S else f" (target <= {COMPILE_TARGET_S:g} s)"
    lines.append(f"{r['family']} T={r['T']} B={r['B']}: compile {r['compile_s']} s{mark}, "
                 f"MFU {r.get('mfu')} ({r.get('mfu_computed')} as computed), temporaries "
                 f"{r.get('temp_gib')} GiB, peak {r.get('peak_mem_gib')} GiB; "
                 f"{r.get('dtype')}, {r.get('attention')} attention, {r.get('prng')}")
  ab = [r for r in recs if r.get("figure") == "plm_jax_bench" and r.get("tag")]
  base = next((r for r in ours if r["family"] == "gpt"), None)
  if ab:
    lines += ["", "| XLA flag (GPT-2 step) | tokens/s | vs without |", "| --- | --- | --- |"]
    for r in ab:
      change = f"{r['tokens_per_s'] / base['tokens_per_s'] - 1:+.1%}" if base else "-"
      lines.append(f"| `{r['tag']}` | {r['tokens_per_s']} | {change} |")
  return lines, missing


def main(argv: list[str]) -> int:
  lines, missing = table(records(argv[1:]))
  print("\n".join(lines))
  if missing:
    print(f"bench_table.py: {missing} work(s) without a figure on one side", file=sys.stderr)
  return 1 if missing else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
