"""Scores of generated text against references, by the reference packages themselves:
sacreBLEU's corpus BLEU (Post, 2018; its default 13a tokenisation) and the rouge-score
package's ROUGE-1/2/L F-measures (Lin, 2004; Porter stemming, as the summarisation papers
report them), plus exact match. All in percent."""

import numpy as np
import sacrebleu
from rouge_score import rouge_scorer

ROUGE = ("rouge1", "rouge2", "rougeL")


def generation_metrics(predictions: list[str], references: list[str]) -> dict:
  if len(predictions) != len(references):
    raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
  if not predictions:
    return {}
  out = {"bleu": float(sacrebleu.corpus_bleu(predictions, [references]).score)}
  scorer = rouge_scorer.RougeScorer(list(ROUGE), use_stemmer=True)
  scores = [scorer.score(r, p) for p, r in zip(predictions, references)]
  for name in ROUGE:
    out[name] = 100.0 * float(np.mean([s[name].fmeasure for s in scores]))
  out["exact_match"] = 100.0 * float(np.mean([p.strip() == r.strip()
                                              for p, r in zip(predictions, references)]))
  return out
