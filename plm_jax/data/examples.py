"""Example builders: BERT sentence pairs (with NSP labels) and GPT fixed-length blocks.

Inputs are tokenised documents: a list of documents, each a list of sentences, each a list of ids.
Outputs are fixed-shape numpy arrays, ready to be batched.
"""

import numpy as np

TokenDoc = list[list[int]]


def truncate_pair(a: list[int], b: list[int], max_tokens: int, rng: np.random.Generator) -> None:
  """Trims the longer segment, from the front or the back at random, until both fit (in place)."""
  while len(a) + len(b) > max_tokens:
    longer = a if len(a) > len(b) else b
    if rng.random() < 0.5:
      del longer[0]
    else:
      longer.pop()


def _random_segment(docs: list[TokenDoc], avoid: int, target: int, rng) -> list[int]:
  """Tokens from a random point of a document other than `avoid`, up to `target` tokens."""
  for _ in range(10):
    other = int(rng.integers(len(docs)))
    if other != avoid:
      break
  doc = docs[other]
  tokens: list[int] = []
  for sentence in doc[int(rng.integers(len(doc))):]:
    tokens.extend(sentence)
    if len(tokens) >= target:
      break
  return tokens


def bert_pairs_from_document(docs: list[TokenDoc], index: int, max_seq_length: int,
                             short_seq_prob: float, rng: np.random.Generator,
                             random_next: bool = True):
  """Yields (tokens_a, tokens_b, is_random_next) from one document, as BERT's data creation did.

  Consecutive sentences fill a chunk up to a target length: max_seq_length - 3, or with
  probability `short_seq_prob` a shorter random one. A is the chunk's first k sentences, B the
  rest (true next) or text from a random other document. Two deliberate changes from the
  original: the short target is drawn per example rather than per document, so that 10% of
  *examples* are short; and the NSP label is drawn first, exactly 50/50, with a one-sentence
  chunk that must be continued taking the document's next sentence (or, at a document's end,
  being split inside the sentence). The original forced a random B on one-sentence chunks, which
  skews NSP labels towards "not next" on corpora of short documents.
  """
  document = docs[index]
  max_tokens = max_seq_length - 3

  def draw_target() -> int:
    if rng.random() < short_seq_prob:
      return int(rng.integers(2, max_tokens + 1))
    return max_tokens

  target = draw_target()
  chunk: list[list[int]] = []
  length = 0
  i = 0
  while i < len(document):
    chunk.append(document[i])
    length += len(document[i])
    if i == len(document) - 1 or length >= target:
      is_random = random_next and len(docs) > 1 and rng.random() < 0.5
      if not is_random and len(chunk) == 1 and i + 1 < len(document):
        i += 1
        chunk.append(document[i])
      a_end = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
      tokens_a = [t for s in chunk[:a_end] for t in s]
      if is_random:
        tokens_b = _random_segment(docs, index, max(1, target - len(tokens_a)), rng)
        i -= len(chunk) - a_end          # unused sentences go back into the stream
      elif a_end < len(chunk):
        tokens_b = [t for s in chunk[a_end:] for t in s]
      else:
        # A one-sentence document: the continuation is the rest of the sentence.
        if len(tokens_a) < 2:
          tokens_a, tokens_b = [], []
        else:
          cut = int(rng.integers(1, len(tokens_a)))
          tokens_a, tokens_b = tokens_a[:cut], tokens_a[cut:]
      if tokens_a and tokens_b:
        truncate_pair(tokens_a, tokens_b, max_tokens, rng)
        yield tokens_a, tokens_b, is_random
      chunk, length = [], 0
      target = draw_target()
    i += 1


def bert_examples(docs: list[TokenDoc], *, max_seq_length: int, short_seq_prob: float,
                  dupe_factor: int, cls_id: int, sep_id: int, pad_id: int,
                  rng: np.random.Generator, sentence_order: bool = False
                  ) -> dict[str, np.ndarray]:
  """All `[CLS] A [SEP] B [SEP]` pairs of `dupe_factor` passes over the documents.

  Returns input_ids, segment_ids, attention_mask (int32, [N, T]) and nsp_labels ([N], 1 = B is
  a random segment, 0 = B is the true continuation, as in BERT and transformers). With
  `sentence_order` (ALBERT's SOP) B is always the true continuation, the two segments are
  swapped in 50% of the examples, and the labels are sop_labels (1 = swapped).
  """
  docs = [d for d in docs if d and any(d)]
  rows_ids, rows_seg, labels = [], [], []
  for _ in range(dupe_factor):
    for index in range(len(docs)):
      for a, b, is_random in bert_pairs_from_document(docs, index, max_seq_length,
                                                       short_seq_prob, rng,
                                                       random_next=not sentence_order):
        if sentence_order:
          is_random = rng.random() < 0.5          # "is_random" now means "swapped"
          if is_random:
            a, b = b, a
        ids = [cls_id, *a, sep_id, *b, sep_id]
        rows_ids.append(ids)
        rows_seg.append([0] * (len(a) + 2) + [1] * (len(b) + 1))
        labels.append(int(is_random))
  n = len(rows_ids)
  input_ids = np.full((n, max_seq_length), pad_id, np.int32)
  segment_ids = np.zeros((n, max_seq_length), np.int32)
  attention_mask = np.zeros((n, max_seq_length), np.int32)
  for r, (ids, seg) in enumerate(zip(rows_ids, rows_seg)):
    input_ids[r, :len(ids)] = ids
    segment_ids[r, :len(seg)] = seg
    attention_mask[r, :len(ids)] = 1
  return {"input_ids": input_ids, "segment_ids": segment_ids, "attention_mask": attention_mask,
          "sop_labels" if sentence_order else "nsp_labels": np.asarray(labels, np.int32)}


def gpt_examples(docs: list[list[int]], *, max_seq_length: int, eos_id: int,
                 ) -> dict[str, np.ndarray]:
  """Documents joined by end-of-text and cut into blocks of T+1 tokens that overlap by one:
  block k is stream[kT : kT+T+1], its inputs row[:-1] and labels row[1:] (see the loader), so
  every target is a real token and no two blocks share a prediction."""
  stream = np.fromiter((t for d in docs for t in (*d, eos_id)), np.int32)
  t = max_seq_length
  n = max(0, (len(stream) - 1) // t)
  index = np.arange(n)[:, None] * t + np.arange(t + 1)[None, :]
  return {"tokens": stream[index] if n else np.zeros((0, t + 1), np.int32)}


def full_sentence_examples(docs: list[TokenDoc], *, max_seq_length: int, cls_id: int,
                           sep_id: int, pad_id: int) -> dict[str, np.ndarray]:
  """RoBERTa's FULL-SENTENCES: `[CLS] s1 s2 ... [SEP]`, consecutive sentences packed up to the
  length, crossing document boundaries with an extra [SEP] between documents; no NSP.
  A sentence longer than a whole sequence is cut into pieces."""
  budget = max_seq_length - 2
  rows: list[list[int]] = []
  current: list[int] = []
  for doc in docs:
    new_document = True
    for sentence in doc:
      for piece in (sentence[i:i + budget] for i in range(0, len(sentence), budget)):
        boundary = [sep_id] if (new_document and current) else []
        if current and len(current) + len(boundary) + len(piece) > budget:
          rows.append(current)
          current, boundary = [], []
        current.extend(boundary + piece)
        new_document = False
  if current:
    rows.append(current)
  n = len(rows)
  input_ids = np.full((n, max_seq_length), pad_id, np.int32)
  attention_mask = np.zeros((n, max_seq_length), np.int32)
  for r, body in enumerate(rows):
    ids = [cls_id, *body[:budget], sep_id]
    input_ids[r, :len(ids)] = ids
    attention_mask[r, :len(ids)] = 1
  return {"input_ids": input_ids, "segment_ids": np.zeros_like(input_ids),
          "attention_mask": attention_mask}


def gpt_packed_examples(docs: list[list[int]], *, max_seq_length: int, eos_id: int,
                        ) -> dict[str, np.ndarray]:
  """Documents (each + end-of-text) packed whole into rows of T+1 tokens, never split across
  rows unless longer than a row; segment ids number the documents of a row (0 = padding) and
  positions restart at every document, so attention never crosses documents.

  Rows are T+1 long: inputs are row[:-1], labels row[1:] (see `serve_causal`).
  """
  width = max_seq_length + 1
  rows: list[list[list[int]]] = [[]]
  used = 0
  for doc in docs:
    tokens = [*doc, eos_id]
    for piece in (tokens[i:i + width] for i in range(0, len(tokens), width)):
      if used + len(piece) > width:
        rows.append([])
        used = 0
      rows[-1].append(piece)
      used += len(piece)
  rows = [r for r in rows if r]
  n = len(rows)
  tokens = np.full((n, width), eos_id, np.int32)
  segments = np.zeros((n, width), np.int32)
  positions = np.zeros((n, width), np.int32)
  for r, pieces in enumerate(rows):
    at = 0
    for k, piece in enumerate(pieces, 1):
      tokens[r, at:at + len(piece)] = piece
      segments[r, at:at + len(piece)] = k
      positions[r, at:at + len(piece)] = np.arange(len(piece))
      at += len(piece)
  return {"tokens": tokens, "segment_ids": segments, "positions": positions}


def _split_a_and_b(data: np.ndarray, sentence: np.ndarray, begin: int, total: int,
                   rng: np.random.Generator):
  """XLNet's two segments after the reused part (the reference's `_split_a_and_b`): A is whole
  sentences from `begin`; B continues A (50%) or is whole sentences from a random place of the
  stream; both trimmed from the right to `total` tokens together. None past the stream's end."""
  n = len(data)
  if begin + total >= n:
    return None
  end = begin + 1
  cuts = []
  while end < n:
    if sentence[end] != sentence[end - 1]:
      if end - begin >= total:
        break
      cuts.append(end)
    end += 1
  if not cuts or rng.random() < 0.5:
    a_end = end if not cuts else int(rng.choice(cuts))
    b_len = max(1, total - (a_end - begin))
    b_begin = int(rng.integers(0, max(1, n - 1 - b_len)))
    b_end = b_begin + b_len
    while b_begin > 0 and sentence[b_begin - 1] == sentence[b_begin]:
      b_begin -= 1
    while b_end < n - 1 and sentence[b_end - 1] == sentence[b_end]:
      b_end += 1
  else:
    a_end = int(rng.choice(cuts))
    b_begin, b_end = a_end, end
  while (a_end - begin) + (b_end - b_begin) > total:
    if a_end - begin > b_end - b_begin:
      a_end -= 1
    else:
      b_end -= 1
  return data[begin:a_end], data[b_begin:b_end]


def xlnet_examples(docs: list[TokenDoc], *, max_seq_length: int, reuse_len: int,
                   segments: int, sep_id: int, cls_id: int, rng: np.random.Generator
                   ) -> dict[str, np.ndarray]:
  """XLNet's pretraining examples (the reference's create_tfrecords), each `segments`
  consecutive segments of the joined text: [reused part, A, <sep>, B, <sep>, <cls>], segment
  ids 0 / 1 / 2. The reused part of segment k + 1 is the text right after that of segment k,
  so the memory of segment k (its reused part) is the context that precedes it.

  Returns input_ids, segment_ids and attention_mask of [N, segments, max_seq_length] (int32).
  """
  parts = [(np.asarray(s, np.int32), i % 2) for d in docs for i, s in enumerate(d) if s]
  if not parts:
    return {"input_ids": np.zeros((0, segments, max_seq_length), np.int32)}
  data = np.concatenate([p for p, _ in parts])
  # sentence parity flips at every sentence (documents start a new one too)
  flips = np.concatenate([np.full(len(p), k % 2, np.int32) for k, (p, _) in enumerate(parts)])
  total = max_seq_length - reuse_len - 3
  rows, row = [], []
  i = 0
  while i + max_seq_length <= len(data):
    pair = _split_a_and_b(data, flips, i + reuse_len, total, rng)
    if pair is None:
      break
    a, b = pair
    ids = np.concatenate([data[i:i + reuse_len], a, [sep_id], b, [sep_id, cls_id]])
    if len(ids) != max_seq_length:       # a stream too short to fill A and B
      break
    seg = np.concatenate([np.zeros(reuse_len + len(a) + 1, np.int32),
                          np.ones(len(b) + 1, np.int32), [2]])
    row.append((ids.astype(np.int32), seg))
    if len(row) == segments:
      rows.append(row)
      row = []
    i += reuse_len if reuse_len > 0 else max_seq_length
  n = len(rows)
  input_ids = np.zeros((n, segments, max_seq_length), np.int32)
  segment_ids = np.zeros_like(input_ids)
  for r, chain in enumerate(rows):
    for s, (ids, seg) in enumerate(chain):
      input_ids[r, s], segment_ids[r, s] = ids, seg
  return {"input_ids": input_ids, "segment_ids": segment_ids,
          "attention_mask": np.ones_like(input_ids)}
