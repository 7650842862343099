"""Benchmark of the keys' second-moment statistics ROME, MEMIT and AlphaEdit weigh their updates with (issue 29):
how long they take from scratch and how the edits change with the amount of text they are computed from.

For each token count of ``--tokens`` (the train text of the training tasks, :func:`~instructedit_utils.methods.rome.
statistics_texts`) the script builds AlphaEdit from scratch (``build_s``: the statistics of its five blocks in one
pass into a temporary cache, so nothing is reused between counts, the prefix contexts and the projectors); then,
with values optimised once per edit (the same for every count), it edits ``--records`` test records per task with
ROME and AlphaEdit and prints

* ``rel``: Reliability, the teacher-forced token accuracy of the target after the edit prompt;
* ``disturb``: how much the edit moves the edited matrices' outputs on keys the statistics never saw — ``‖Δ k‖ /
  ‖W k‖`` averaged over every token of held-out text (the tasks' validation records), the quantity the covariance
  weighting is there to keep small;
* AlphaEdit's null-space dimensions per block.

Not a test: run it by hand, nothing else running::

    python benchmarks/bench_key_statistics.py --tokens 2500 5000 10000 20000 40000 --records 3
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from common import add_model_arguments, load_frozen_model
from instructedit_utils.data.tasks import load_task
from instructedit_utils.evaluation.requests import task_requests
from instructedit_utils.methods import build
from instructedit_utils.methods.rome import ValueCache, record_texts, statistics_texts
from instructedit_utils.models.key_statistics import collect_moments
from instructedit_utils.models.metrics import encode_pair
from instructedit_utils.util.paths import CACHE_ENV


@torch.no_grad()
def reliability(model, tok, request) -> float:
    enc = encode_pair(tok, request.prompt, request.target)
    logits = model(input_ids=torch.tensor([list(enc.input_ids)])).logits[0]
    predicted = logits[torch.tensor(enc.target_positions) - 1].argmax(-1)
    return float((predicted == torch.tensor(enc.targets)).float().mean())


def disturbance(method, model, deltas, held_out_moments) -> float:
    """Mean over blocks of sqrt(tr(Δ M Δᵀ) / tr(W M Wᵀ)) with M the held-out keys' second moment."""
    out = []
    for i, (_, param, conv1d) in enumerate(method.matrices):
        d = deltas[param].double()
        d = d.T if conv1d else d
        w = method.weight(model, i).double()
        m = held_out_moments[method.matrices[i][0]]
        out.append(float(torch.sqrt(torch.trace(d @ m @ d.T) / torch.trace(w @ m @ w.T))))
    return sum(out) / len(out)


def main() -> None:
    parser = add_model_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]),
                                 ["counterfact", "recent", "zsre"], 3)
    parser.add_argument("--tokens", type=int, nargs="+", default=[2500, 5000, 10000, 20000, 40000])
    args = parser.parse_args()
    model, tok = load_frozen_model(args)
    requests = task_requests(args.tasks, "test", args.records, seed=args.seed, instructions=False)
    values = ValueCache(Path(tempfile.mkdtemp(prefix="bench-values-")))
    held_out = [t for task in ("counterfact", "recent", "convsent") for r in load_task(task, "val")[:20]
                for t in record_texts(r)]
    for count in args.tokens:
        with tempfile.TemporaryDirectory() as cache:
            os.environ[CACHE_ENV] = cache
            texts = statistics_texts(tok, ("counterfact", "recent", "convsent"), count)
            start = time.perf_counter()
            alpha = build("alphaedit", model, tok, texts=texts)
            seconds = time.perf_counter() - start
            rome = build("rome", model, tok, texts=texts)
        modules = [m for m, _, _ in alpha.matrices]
        moments = dict(zip(modules, (t for t in collect_moments(model, tok, modules, held_out)[0])))
        row = {"tokens": alpha.stats[0].tokens, "build_s": round(seconds, 1), "null_space": alpha.null_space()}
        for name, method in (("rome", rome), ("alphaedit", alpha)):
            method.values = values
            rel, dist = [], []
            for request in requests:
                deltas = method.weight_deltas(model, tok, request)
                with method.edited(model, tok, request):
                    rel.append(reliability(model, tok, request))
                dist.append(disturbance(method, model, deltas, moments))
            row[f"{name}/rel"] = round(sum(rel) / len(rel), 3)
            row[f"{name}/disturb"] = round(sum(dist) / len(dist), 5)
        print(row, flush=True)


if __name__ == "__main__":
    main()
