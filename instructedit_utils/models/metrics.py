"""Metrics of the paper, batched and offline.

* **Teacher-forced token accuracy** (:func:`score_targets`): the share of target tokens that the model's argmax
  predicts given the prompt and the previous target tokens. Reliability = on the edit prompt, Generalization = on
  rephrases, Portability = on portability prompts against their answers.
* **Locality** (:func:`locality_agreement`): the share of answer tokens of a locality prompt where the edited
  model's argmax equals the unedited model's.
* **Fluency** (:func:`fluency`): weighted bigram/trigram entropy (bits) of generated text, as in ROME/EasyEdit,
  ``mean(2/3·H₂, 4/3·H₃) = H₂/3 + 2·H₃/3`` (:func:`ngram_entropy`), of the **generated continuation only**.
  Words are split with a regex (``\\w+`` or one punctuation mark) instead of NLTK's tokenizer. A continuation of
  fewer than :data:`FLUENCY_MIN_WORDS` words (the model ended its answer at once) has no trigram, hence no entropy:
  it counts as *empty* (``fluency/empty`` = 1) and gets no ``fluency/entropy``, so Fluency is the mean over
  non-empty continuations and the share of empty ones is reported beside it. (ROME scores prompt + continuation;
  there an empty continuation scores the prompt's own entropy, which on short answers such as ZsRE's measured
  mostly the prompt.)
* **ConvSent edit success** (:func:`sentiment_edit_success`): the measure the paper's ConvSent Reliability is, from
  SERAC (Mitchell et al. 2022, ``es_sentiment`` in its ``metrics.py``) as EasyEdit computes it (``es`` in
  ``easyeditor/evaluate/evaluate_utils.py``, called by ``compute_sent_metric``): over the responses the dataset holds
  for the topic, ``z_sent = σ(ℓ⁺_post − ℓ⁻_post)`` (the edited model prefers target-sentiment responses) times
  ``z_topic = min(1, exp(ℓ⁺_post − ℓ⁺_pre))`` (it did not get there by making the topic's responses unlikely), where
  ``ℓ⁺``/``ℓ⁻`` are the mean log-probabilities over all tokens of the target-/opposite-sentiment responses. The
  unedited model scores ``σ(ℓ⁺ − ℓ⁻)``. Unlike SERAC and EasyEdit, the edit's own target response is not among the
  responses scored (it is what the edit was computed on). Offline, without a sentiment classifier.
* **ConvSent pair ranking** (:func:`sentiment_success`), a secondary view: the share of (target, opposite) response
  pairs where the target response's mean per-token log-likelihood is higher. 0.5 means no preference.

Labels are aligned by tokenizing ``prompt + target`` as one sequence and marking the tokens whose character span
reaches into the target (offset mapping), so BOS tokens, merges at the boundary and leading spaces are handled.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch


def join_prompt_target(prompt: str, target: str) -> tuple[str, int]:
    """Concatenate prompt and target with one space where neither supplies whitespace; return (text, boundary).

    ``boundary`` is the number of characters belonging to the prompt: the separating space counts as target.
    """
    if not prompt:
        raise ValueError("Empty prompt: a target needs a prompt to condition on")
    if not target:
        raise ValueError(f"Empty target for prompt {prompt!r}")
    sep = "" if prompt[-1].isspace() or target[0].isspace() else " "
    return prompt + sep + target, len(prompt)


@dataclass(frozen=True)
class Encoded:
    """One tokenized prompt+target sequence with the positions of its target tokens."""

    input_ids: tuple[int, ...]
    target_positions: tuple[int, ...]  # indices into input_ids of target tokens (all >= 1)

    @property
    def inputs(self) -> tuple[int, ...]:
        """The tokens the model must read to predict every target token: ``input_ids`` without the tokens after the
        last target's predecessor (the last target token is only a label; nothing attends back from later)."""
        return self.input_ids[:max(self.target_positions)]

    @property
    def targets(self) -> tuple[int, ...]:
        return tuple(self.input_ids[p] for p in self.target_positions)


def encode_pair(tokenizer, prompt: str, target: str) -> Encoded:
    """Tokenize ``prompt + target`` and find which tokens belong to the target (see module docstring)."""
    text, boundary = join_prompt_target(prompt, target)
    enc = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    ids, offsets, special = enc["input_ids"], enc["offset_mapping"], enc["special_tokens_mask"]
    positions = tuple(i for i, ((_, end), sp) in enumerate(zip(offsets, special)) if not sp and end > boundary)
    if not positions:
        raise ValueError(f"No target tokens found for target {target!r} after prompt {prompt!r}")
    if positions[0] == 0:
        raise ValueError(f"Target {target!r} starts at the first token; the prompt {prompt!r} has no own token")
    return Encoded(tuple(ids), positions)


@dataclass(frozen=True)
class TargetScore:
    """Teacher-forced result for one (prompt, target): argmax predictions and log-probs at each target token."""

    targets: tuple[int, ...]
    predictions: tuple[int, ...]
    logprobs: tuple[float, ...]

    @property
    def n_tokens(self) -> int:
        return len(self.targets)

    @property
    def acc(self) -> float:
        return sum(p == t for p, t in zip(self.predictions, self.targets)) / len(self.targets)

    @property
    def mean_logprob(self) -> float:
        return float(sum(self.logprobs) / len(self.logprobs))


def _pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, left: bool = False, device=None):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, sl] = torch.tensor(s, dtype=torch.long)
        mask[i, sl] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def score_encoded(model, encoded: Sequence[Encoded], pad_id: int, batch_size: int = 16) -> list[TargetScore]:
    """Teacher-forced scores for pre-encoded sequences, in batches of similar length (right padding)."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].inputs))
    results: list[TargetScore | None] = [None] * len(encoded)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        # the last target token is only a label: the model never needs to read it
        ids, mask = _pad_batch([encoded[i].inputs for i in idx], pad_id, device=device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        rows = torch.tensor([r for r, i in enumerate(idx) for _ in encoded[i].target_positions], device=device)
        pos = torch.tensor([p for i in idx for p in encoded[i].target_positions], device=device)
        for i, score in zip(idx, scores_from_logits(logits[rows, pos - 1], [encoded[i] for i in idx])):
            results[i] = score
    return results  # type: ignore[return-value]


def scores_from_logits(logits: torch.Tensor, encoded: Sequence[Encoded]) -> list[TargetScore]:
    """:class:`TargetScore` per sequence from logits ``[N, V]`` predicting the sequences' target tokens in order
    (``N`` = all their target positions)."""
    logits = logits.float()
    tgt = torch.tensor([t for e in encoded for t in e.targets], device=logits.device)
    preds = logits.argmax(-1).tolist()
    lps = (logits.gather(-1, tgt[:, None])[:, 0] - logits.logsumexp(-1)).tolist()
    tgt_list = tgt.tolist()
    out, k = [], 0
    for e in encoded:
        n = len(e.target_positions)
        out.append(TargetScore(tuple(tgt_list[k:k + n]), tuple(preds[k:k + n]), tuple(lps[k:k + n])))
        k += n
    return out


def score_targets(model, tokenizer, prompts: Sequence[str], targets: Sequence[str],
                  batch_size: int = 16) -> list[TargetScore]:
    """Teacher-forced :class:`TargetScore` for each (prompt, target) pair, computed in batches."""
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    encoded = [encode_pair(tokenizer, p, t) for p, t in zip(prompts, targets)]
    return score_encoded(model, encoded, tokenizer.pad_token_id, batch_size)


def perplexity(model, tokenizer, prompts: Sequence[str], continuations: Sequence[str], batch_size: int = 16) -> float:
    """Perplexity of ``continuations`` after their ``prompts``: ``exp`` of the mean negative log-probability over every
    continuation token of every pair (token-weighted, teacher forced), the model's behaviour on text no edit aimed at."""
    return perplexity_of(score_targets(model, tokenizer, prompts, continuations, batch_size))


def perplexity_of(scores: Sequence["TargetScore"]) -> float:
    """:func:`perplexity` from teacher-forced scores (e.g. of a split runner)."""
    logprobs = [lp for sc in scores for lp in sc.logprobs]
    if not logprobs:
        raise ValueError("perplexity needs at least one continuation token")
    return math.exp(-sum(logprobs) / len(logprobs))


def token_accuracy(model, tokenizer, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 16) -> list[float]:
    """Per-pair teacher-forced token accuracy (Reliability / Generalization / Portability)."""
    return [s.acc for s in score_targets(model, tokenizer, prompts, targets, batch_size)]


def locality_agreement(pre: TargetScore, post: TargetScore) -> float:
    """Share of answer tokens where the edited model's argmax equals the unedited model's."""
    if pre.targets != post.targets:
        raise ValueError("Locality compares predictions on the same answer tokens; got different targets")
    return sum(a == b for a, b in zip(pre.predictions, post.predictions)) / len(pre.predictions)


# --------------------------------------------------------------------------------------------------------------------
# Fluency
# --------------------------------------------------------------------------------------------------------------------

_WORDS = re.compile(r"\w+|[^\w\s]")


def ngrams(text: str, n: int) -> Counter:
    words = _WORDS.findall(text)
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


FLUENCY_MIN_WORDS = 3  # fewer words have no trigram: the continuation counts as empty


def fluency(continuation: str) -> dict[str, float]:
    """``fluency/empty`` (1.0 when the continuation has fewer than :data:`FLUENCY_MIN_WORDS` words, else 0.0) and,
    for a non-empty continuation, ``fluency/entropy`` (:func:`ngram_entropy` of the continuation alone)."""
    if len(_WORDS.findall(continuation)) < FLUENCY_MIN_WORDS:
        return {"fluency/empty": 1.0}
    return {"fluency/empty": 0.0, "fluency/entropy": ngram_entropy(continuation)}


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """Mean over ``n`` of ``weight_n · H_n`` (bits), H_n the entropy of the text's n-gram frequency distribution."""
    values = []
    for n, w in zip(ns, weights):
        counts = np.array(list(ngrams(text, n).values()), dtype=float)
        if counts.size == 0:
            values.append(0.0)
            continue
        freqs = counts / counts.sum()
        values.append(w * float(-(freqs * np.log2(freqs)).sum()))
    return float(np.mean(values))


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 40, batch_size: int = 16) -> list[str]:
    """Greedy continuations (new text only), batched with left padding."""
    device = next(model.parameters()).device
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        ids, mask = _pad_batch([tokenizer(p)["input_ids"] for p in chunk], tokenizer.pad_token_id, left=True,
                               device=device)
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                             temperature=None, top_p=None, top_k=None)
        out += tokenizer.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True)
    return out


_OPENING = " \"'“‘«("
_CLOSING = " \"'”’».,;:!?)"
#: an answer label a continuation may start with (the instruction's ``Input:`` line invites ``Output:``)
_LABEL = re.compile(r"^(?:output|answer|a)\s*:\s*")


def generation_success(continuation: str, target: str) -> float:
    """1.0 when a greedy ``continuation`` starts with ``target``, else 0.0: case, runs of white space, one leading
    answer label (``Output:``, ``Answer:``, ``A:``), opening quotes or brackets before the target and closing
    punctuation of the target are ignored, and the target must end at a word boundary (``Paris`` succeeds in *Paris,
    France* and in *Output: Paris*, fails in *Parisian*; *Par* fails for ``Paris``)."""
    goal = " ".join(target.lower().split()).strip(_CLOSING).lstrip(_OPENING)
    if not goal:
        raise ValueError(f"generation_success needs a non-empty target, got {target!r}")
    text = _LABEL.sub("", " ".join(continuation.lower().split()).lstrip(_OPENING), count=1).lstrip(_OPENING)
    if not text.startswith(goal):
        return 0.0
    rest = text[len(goal):]
    return 1.0 if not rest or not rest[0].isalnum() else 0.0


#: where a freely generated answer ends (after EOS, which generation stops at): a line break, or a sentence end — a
#: ``.``, ``!`` or ``?`` followed by white space or the end of the text (``3.5`` and ``U.S.A`` do not end it)
_NATURAL_STOP = re.compile(r"\n|[.!?](?=\s|$)")
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_PUNCTUATION = re.compile(r"[^\w\s]")


def natural_answer(continuation: str) -> str:
    """A greedy continuation cut at its natural stop (:data:`_NATURAL_STOP`): what the model answered, not cut to the
    target's length. Leading white space and line breaks are skipped first (an answer may start on a new line)."""
    text = continuation.lstrip()
    match = _NATURAL_STOP.search(text)
    return text[: match.start()] if match else text


def normalized_answer(text: str) -> str:
    """SQuAD's answer normalisation (lower case, punctuation and the articles *a*, *an*, *the* removed, runs of white
    space collapsed), after one leading answer label (``Output:``, ``Answer:``, ``A:``) is dropped."""
    text = _LABEL.sub("", " ".join(text.lower().split()), count=1)
    return " ".join(_ARTICLES.sub(" ", _PUNCTUATION.sub(" ", text)).split())


def natural_success(continuation: str, target: str) -> dict[str, float]:
    """Success as the model says it: the continuation cut at its natural stop (:func:`natural_answer`) is the target
    (``em``: normalised exact match, :func:`normalized_answer`) or holds it as whole words (``contains``)."""
    goal = normalized_answer(target)
    if not goal:
        raise ValueError(f"natural_success needs a target with a word in it, got {target!r}")
    answer = normalized_answer(natural_answer(continuation))
    return {"em": float(answer == goal), "contains": float(f" {goal} " in f" {answer} ")}


# --------------------------------------------------------------------------------------------------------------------
# ConvSent
# --------------------------------------------------------------------------------------------------------------------


def _token_mean(responses: Sequence[Sequence[float]]) -> float:
    """Mean log-probability over all tokens of all ``responses`` (token-level, as SERAC's ``masked_mean``)."""
    tokens = [lp for response in responses for lp in response]
    if not tokens:
        raise ValueError("a sentiment measure needs at least one response token")
    return float(np.mean(tokens))


def sentiment_edit_success(target_post: Sequence[Sequence[float]], opposite_post: Sequence[Sequence[float]],
                           target_pre: Sequence[Sequence[float]] | None = None) -> dict[str, float]:
    """ConvSent's edit success (see the module docstring): ``sentiment/es`` = ``z_sent · z_topic`` with
    ``sentiment/z_sent`` and ``sentiment/z_topic``. Arguments are per-token log-probabilities of each response
    after the edit (``target_post``, ``opposite_post``) and of the target-sentiment responses before it
    (``target_pre``; None: the model scored is the unedited one, ``z_topic`` = 1)."""
    pos_post, neg_post = _token_mean(target_post), _token_mean(opposite_post)
    pos_pre = pos_post if target_pre is None else _token_mean(target_pre)
    z_sent = 1.0 / (1.0 + math.exp(-(pos_post - neg_post)))
    z_topic = min(1.0, math.exp(min(0.0, pos_post - pos_pre)))
    return {"sentiment/es": z_sent * z_topic, "sentiment/z_sent": z_sent, "sentiment/z_topic": z_topic}


def sentiment_success(target_logprobs: Sequence[float], opposite_logprobs: Sequence[float]) -> float:
    """Share of (target, opposite) response pairs where the target-sentiment response is more likely (ties: ½)."""
    if not target_logprobs or not opposite_logprobs:
        raise ValueError("sentiment_success needs responses of both sentiments")
    t = np.asarray(target_logprobs, dtype=float)[:, None]
    o = np.asarray(opposite_logprobs, dtype=float)[None, :]
    return float(((t > o) + 0.5 * (t == o)).mean())


# --------------------------------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------------------------------


def bootstrap_ci(values: Sequence[float], n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap ``1-alpha`` confidence interval ``(mean, low, high)``; NaNs are ignored."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if x.size == 0:
        return (math.nan, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(x.mean()), float(lo), float(hi)
