"""The official SQuAD evaluation scripts' scoring, kept as they are written (evaluate-v1.1.py and
evaluate-v2.0.py, https://rajpurkar.github.io/SQuAD-explorer/; v2.0's threshold sweep as in
transformers' squad_metrics.py, Apache-2.0): the reference plm_jax/finetune/qa/metrics.py is
tested against. Not plm-jax code: do not restyle."""

import collections
import re
import string


def normalize_answer(s):
  """Lower text and remove punctuation, articles and extra whitespace."""
  def remove_articles(text):
    regex = re.compile(r'\b(a|an|the)\b', re.UNICODE)
    return re.sub(regex, ' ', text)

  def white_space_fix(text):
    return ' '.join(text.split())

  def remove_punc(text):
    exclude = set(string.punctuation)
    return ''.join(ch for ch in text if ch not in exclude)

  def lower(text):
    return text.lower()
  return white_space_fix(remove_articles(remove_punc(lower(s))))


# --- evaluate-v1.1.py ---

def f1_score_v1(prediction, ground_truth):
  prediction_tokens = normalize_answer(prediction).split()
  ground_truth_tokens = normalize_answer(ground_truth).split()
  common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
  num_same = sum(common.values())
  if num_same == 0:
    return 0
  precision = 1.0 * num_same / len(prediction_tokens)
  recall = 1.0 * num_same / len(ground_truth_tokens)
  f1 = (2 * precision * recall) / (precision + recall)
  return f1


def exact_match_score_v1(prediction, ground_truth):
  return (normalize_answer(prediction) == normalize_answer(ground_truth))


def metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
  scores_for_ground_truths = []
  for ground_truth in ground_truths:
    score = metric_fn(prediction, ground_truth)
    scores_for_ground_truths.append(score)
  return max(scores_for_ground_truths)


def evaluate_v1(golds, predictions):
  f1 = exact_match = total = 0
  for qid, ground_truths in golds.items():
    total += 1
    prediction = predictions[qid]
    exact_match += metric_max_over_ground_truths(exact_match_score_v1, prediction, ground_truths)
    f1 += metric_max_over_ground_truths(f1_score_v1, prediction, ground_truths)
  return {'exact_match': 100.0 * exact_match / total, 'f1': 100.0 * f1 / total}


# --- evaluate-v2.0.py ---

def get_tokens(s):
  if not s:
    return []
  return normalize_answer(s).split()


def compute_exact(a_gold, a_pred):
  return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold, a_pred):
  gold_toks = get_tokens(a_gold)
  pred_toks = get_tokens(a_pred)
  common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
  num_same = sum(common.values())
  if len(gold_toks) == 0 or len(pred_toks) == 0:
    # If either is no-answer, then F1 is 1 if they agree, 0 otherwise
    return int(gold_toks == pred_toks)
  if num_same == 0:
    return 0
  precision = 1.0 * num_same / len(pred_toks)
  recall = 1.0 * num_same / len(gold_toks)
  f1 = (2 * precision * recall) / (precision + recall)
  return f1


def get_raw_scores(golds, preds):
  exact_scores = {}
  f1_scores = {}
  for qid, answers in golds.items():
    gold_answers = [a for a in answers if normalize_answer(a)]
    if not gold_answers:
      # For unanswerable questions, only correct answer is empty string
      gold_answers = ['']
    a_pred = preds[qid]
    # Take max over all gold answers
    exact_scores[qid] = max(compute_exact(a, a_pred) for a in gold_answers)
    f1_scores[qid] = max(compute_f1(a, a_pred) for a in gold_answers)
  return exact_scores, f1_scores


def make_eval_dict(exact_scores, f1_scores, qid_list=None):
  if not qid_list:
    total = len(exact_scores)
    return collections.OrderedDict([
        ('exact', 100.0 * sum(exact_scores.values()) / total),
        ('f1', 100.0 * sum(f1_scores.values()) / total),
        ('total', total),
    ])
  else:
    total = len(qid_list)
    return collections.OrderedDict([
        ('exact', 100.0 * sum(exact_scores[k] for k in qid_list) / total),
        ('f1', 100.0 * sum(f1_scores[k] for k in qid_list) / total),
        ('total', total),
    ])


def find_best_thresh(preds, scores, na_probs, qid_to_has_ans):
  num_no_ans = sum(1 for k in qid_to_has_ans if not qid_to_has_ans[k])
  cur_score = num_no_ans
  best_score = cur_score
  best_thresh = 0.0
  qid_list = sorted(na_probs, key=lambda k: na_probs[k])
  for i, qid in enumerate(qid_list):
    if qid not in scores:
      continue
    if qid_to_has_ans[qid]:
      diff = scores[qid]
    else:
      if preds[qid]:
        diff = -1
      else:
        diff = 0
    cur_score += diff
    if cur_score > best_score:
      best_score = cur_score
      best_thresh = na_probs[qid]
  return 100.0 * best_score / len(scores), best_thresh


def evaluate_v2(golds, preds, na_probs=None):
  qid_to_has_ans = {k: bool(v) for k, v in golds.items()}
  has_ans_qids = [k for k, v in qid_to_has_ans.items() if v]
  no_ans_qids = [k for k, v in qid_to_has_ans.items() if not v]
  exact_raw, f1_raw = get_raw_scores(golds, preds)
  out_eval = make_eval_dict(exact_raw, f1_raw)
  for prefix, qids in (('HasAns', has_ans_qids), ('NoAns', no_ans_qids)):
    if qids:
      for k, v in make_eval_dict(exact_raw, f1_raw, qid_list=qids).items():
        out_eval['%s_%s' % (prefix, k)] = v
  if na_probs is not None:
    out_eval['best_exact'], out_eval['best_exact_thresh'] = find_best_thresh(
        preds, exact_raw, na_probs, qid_to_has_ans)
    out_eval['best_f1'], out_eval['best_f1_thresh'] = find_best_thresh(
        preds, f1_raw, na_probs, qid_to_has_ans)
  return out_eval
