"""Benchmark of editing-area collection (chapter 5): vectors per second, batched vs one edit at a time, and peak memory.

* ``loop``: one edit at a time — :meth:`~instructedit_utils.editor.MendEditor.edit` with ``return_factors=True``
  (its own lower and upper pass), then the sketch and the norms of its transformed factors;
* ``batched``: :func:`~instructedit_utils.gradients.editing_areas` — ``--edit-batch`` edits per lower pass and per
  forward/backward pass of the edited blocks, one pass of the editor network.

Both give the same vectors (checked: largest relative difference of norms and sketches). For each ``--ranks`` value
an editor of that rank is built for the model (``--editor DIR`` uses a trained one instead) with its normalisation
statistics filled from a few edits. Then, with ``--rss-editors`` editors (different seeds) and ``--rss-records``
records per task, the full collection into a temporary run folder, and the process's peak RSS (targets: ≥ 3× the
loop at the same thread count; peak RSS ≤ 1.5 GB for 4 tasks × 200 records × 3 editors). Not a test::

    python benchmarks/bench_gradients.py --threads 1
    python benchmarks/bench_gradients.py --threads 1 --ranks 256 --rss-records 0      # speed only
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time

from common import add_model_arguments, load_frozen_model


def _editor(model, tok, rank: int, seed: int, warm_requests, layers):
    import torch

    from instructedit_utils.config import MethodConfig
    from instructedit_utils.editor import MendEditor

    torch.manual_seed(seed)
    editor = MendEditor.for_model(model, MethodConfig(name=f"bench-{rank}-{seed}", rank=rank), layers)
    for r in warm_requests:
        editor.observe(editor.raw_factors(model, tok, r.prompt, r.target, header=r.header)[0])
    with torch.no_grad():  # a non-identity network (an untrained one would transform nothing)
        for p in editor.nets.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return editor.eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, ["counterfact", "recent", "convsent", "zsre"], 8)  # --records: speed comparison
    parser.add_argument("--editor", help="folder of a trained editor (instead of built ones)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[256, 1920])
    parser.add_argument("--edit-batch", type=int, default=16)
    parser.add_argument("--sketch-dim", type=int, default=2048)
    parser.add_argument("--rss-records", type=int, default=200, help="records per task for the memory run (0: skip)")
    parser.add_argument("--rss-editors", type=int, default=3)
    args = parser.parse_args()

    import numpy as np
    import torch

    from instructedit_utils import baselines
    from instructedit_utils.config import ExperimentConfig
    from instructedit_utils.evaluation import task_requests
    from instructedit_utils.gradients import Sketch, collect_areas, editing_areas, frobenius_norms
    from instructedit_utils.models import resolve_preset

    model, tok = load_frozen_model(args)
    layers = resolve_preset(args.model).edit_layers or None
    splits = ExperimentConfig(run_dir=tempfile.gettempdir(), tasks=tuple(args.tasks)).splits(args.tasks)
    requests = task_requests(args.tasks, splits, args.records, seed=args.seed, instructions=True)
    warm = task_requests(args.tasks, splits, 2, seed=args.seed + 1, instructions=True)
    editors = ({"trained": baselines.build("mend", model, tok, editor_dir=args.editor).editor} if args.editor else
               {f"rank {r}": _editor(model, tok, r, args.seed, warm, layers) for r in args.ranks})
    out = {"model": args.model, "threads": args.threads, "edits": len(requests), "edit_batch": args.edit_batch,
           "sketch_dim": args.sketch_dim, "runs": {}}
    for label, editor in editors.items():
        sketch = Sketch(editor.targets, args.sketch_dim, seed=0)
        names = [t.name for t in editor.targets]

        def loop():
            sk = {n: [] for n in names}
            nm = {n: [] for n in names}
            with torch.no_grad():
                for r in requests:
                    tr = editor.edit(model, tok, r.prompt, r.target, header=r.header, return_factors=True).transformed
                    for n in names:
                        sk[n].append(sketch.project(n, tr[n], 1)[0].numpy())
                        nm[n].append(frobenius_norms(tr[n], 1)[0].item())
            return {n: np.stack(v) for n, v in sk.items()}, {n: np.array(v) for n, v in nm.items()}

        editing_areas(editor, model, tok, requests[:2], sketch, args.edit_batch)  # warm-up (header cache)
        t0 = time.perf_counter()
        loop_sk, loop_norms = loop()
        t_loop = time.perf_counter() - t0
        t0 = time.perf_counter()
        batched = editing_areas(editor, model, tok, requests, sketch, args.edit_batch)
        t_batch = time.perf_counter() - t0
        rel = max(float(np.max(np.abs(batched.norms[n] - loop_norms[n]) / np.abs(loop_norms[n]).clip(1e-12)))
                  for n in names)
        rel_sk = max(float(np.max(np.abs(batched.sketches[n] - loop_sk[n])) / np.abs(loop_sk[n]).max())
                     for n in names)
        out["runs"][label] = {"loop_vectors_per_s": len(requests) / t_loop,
                              "batched_vectors_per_s": len(requests) / t_batch, "speedup": t_loop / t_batch,
                              "max_rel_norm_diff": rel, "max_rel_sketch_diff": rel_sk}
        print(f"{label}: loop {len(requests) / t_loop:.2f} vectors/s | batched {len(requests) / t_batch:.2f} "
              f"vectors/s -> {t_loop / t_batch:.1f}x (target >= 3x); max rel. difference: norms {rel:.1e}, "
              f"sketches {rel_sk:.1e}", flush=True)
    if args.rss_records:
        rss_requests = task_requests(args.tasks, splits, args.rss_records, seed=args.seed, instructions=True)
        rank = args.ranks[0]
        elapsed = 0.0
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.rss_editors):
                editor = _editor(model, tok, rank, args.seed + i, warm, layers)
                method = baselines.build("mend", model, tok, editor=editor, name=f"editor{i}")
                t0 = time.perf_counter()
                collect_areas(method, model, tok, rss_requests, f"{tmp}/editor{i}",
                              Sketch(editor.targets, args.sketch_dim), batch_edits=args.edit_batch)
                elapsed += time.perf_counter() - t0
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
        n = len(rss_requests) * args.rss_editors
        out["collection"] = {"editors": args.rss_editors, "records_per_task": args.rss_records, "vectors": n,
                             "rank": rank, "seconds": elapsed, "vectors_per_s": n / elapsed, "peak_rss_gb": peak_gb}
        print(f"collection: {n} vectors ({len(args.tasks)} tasks x {args.rss_records} records x {args.rss_editors} "
              f"editors, rank {rank}) in {elapsed:.0f} s ({n / elapsed:.1f}/s); peak RSS {peak_gb:.2f} GB "
              f"(target <= 1.5 GB)")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
