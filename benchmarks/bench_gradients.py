"""Benchmark of editing-area collection (chapter 6): vectors per second, batched vs one edit at a time, and peak memory.

* ``plain loop``: one edit at a time with plain forward passes of the whole model (no split forward, no
  instruction-header cache) — how a straightforward loop computes it (EasyEdit-style, as in ``bench_evaluation``);
* ``edit loop``: one edit at a time through :meth:`~instructedit_utils.methods.mend.MendEditor.edit` with
  ``return_factors=True`` — already with the split forward and the header cache;
* ``batched``: :func:`~instructedit_utils.evaluation.gradients.editing_areas` — ``--edit-batch`` edits per lower pass and per
  forward/backward pass of the edited blocks, one pass of the editor network.

Every way then takes the sketch and the norms of the transformed factors.

Both give the same vectors (checked: largest relative difference of norms and sketches). For each ``--ranks`` value
an editor of that rank is built for the model (``--editor DIR`` uses a trained one instead) with its normalisation
statistics filled from a few edits. Then, with ``--rss-editors`` editors (different seeds) and ``--rss-records``
records per task, the full collection into a temporary run folder as chapter 6 does it (the editors share one runner,
so the lower blocks run once per prompt for all of them), and the process's peak RSS (targets: ≥ 3× the loop at the
same thread count; peak RSS ≤ 1.5 GB for 4 tasks × 200 records × 3 editors). Not a test::

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

    from instructedit_utils.config.method import MethodConfig
    from instructedit_utils.methods import MendEditor

    torch.manual_seed(seed)
    editor = MendEditor.for_model(model, MethodConfig(name=f"bench-{rank}-{seed}", rank=rank), layers)
    for r in warm_requests:
        editor.observe(editor.raw_factors(model, tok, r.prompt, r.target, header=r.header)[0])
    with torch.no_grad():  # a non-identity network (an untrained one would transform nothing)
        for p in editor.nets.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return editor.eval()


def _speed(editor, model, tok, requests, args) -> dict:
    """Vectors per second of the plain loop, the edit loop and the batched path for one editor (same vectors)."""
    import numpy as np
    import torch

    from instructedit_utils.models.forward import FullForward
    from instructedit_utils.evaluation.gradients import Sketch, editing_areas, frobenius_norms

    sketch = Sketch(editor.targets, args.sketch_dim, seed=0)
    names = [t.name for t in editor.targets]

    def loop(plain: bool):
        sk = {n: [] for n in names}
        nm = {n: [] for n in names}
        cached = editor._runners.get(id(model))
        if plain:  # the whole model, every token, every edit
            editor._runners[id(model)] = FullForward(model)
        try:
            with torch.no_grad():
                for r in requests:
                    tr = editor.edit(model, tok, r.prompt, r.target, header=None if plain else r.header,
                                     return_factors=True).transformed
                    for n in names:
                        sk[n].append(sketch.project(n, tr[n], 1)[0].numpy())
                        nm[n].append(frobenius_norms(tr[n], 1)[0].item())
        finally:
            if plain:
                editor._runners.pop(id(model))
                if cached is not None:
                    editor._runners[id(model)] = cached
        return {n: np.stack(v) for n, v in sk.items()}, {n: np.array(v) for n, v in nm.items()}

    editing_areas(editor, model, tok, requests, sketch, args.edit_batch)  # warm-up: every header cached
    timings, results = {}, {}
    for way, fn in (("plain loop", lambda: loop(True)), ("edit loop", lambda: loop(False)),
                    ("batched", lambda: editing_areas(editor, model, tok, requests, sketch, args.edit_batch))):
        t0 = time.perf_counter()
        results[way] = fn()
        timings[way] = time.perf_counter() - t0
    batched = results["batched"]
    diff = 0.0
    for way in ("plain loop", "edit loop"):
        loop_sk, loop_norms = results[way]
        for n in names:
            diff = max(diff, float(np.max(np.abs(batched.norms[n] - loop_norms[n]) / loop_norms[n].clip(1e-12))),
                       float(np.max(np.abs(batched.sketches[n] - loop_sk[n])) / np.abs(loop_sk[n]).max()))
    n_req = len(requests)
    return {**{f"{w}_vectors_per_s": n_req / t for w, t in timings.items()},
            "speedup_vs_plain_loop": timings["plain loop"] / timings["batched"],
            "speedup_vs_edit_loop": timings["edit loop"] / timings["batched"], "max_rel_diff": diff}


def _collection(model, tok, requests, warm, layers, args) -> dict:
    """The full collection as chapter 6 runs it: ``--rss-editors`` editors sharing one runner (the lower blocks run
    once per prompt for all of them), written to a temporary run folder."""
    from instructedit_utils import methods as baselines
    from instructedit_utils.models.forward import SplitForward
    from instructedit_utils.evaluation.gradients import AreaJob, Sketch, collect_many

    rank = args.ranks[0]
    editors = [_editor(model, tok, rank, args.seed + i, warm, layers) for i in range(args.rss_editors)]
    shared = SplitForward(model, editors[0].first_block(model))
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [AreaJob(baselines.build("mend", model, tok, editor=e, name=f"editor{i}"), requests,
                        f"{tmp}/editor{i}", Sketch(e.targets, args.sketch_dim)) for i, e in enumerate(editors)]
        t0 = time.perf_counter()
        collect_many(jobs, model, tok, batch_edits=args.edit_batch, runner=shared)
        elapsed = time.perf_counter() - t0
    n = len(requests) * args.rss_editors
    return {"editors": args.rss_editors, "records_per_task": args.rss_records, "vectors": n, "rank": rank,
            "seconds": elapsed, "vectors_per_s": n / elapsed,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2}


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

    from instructedit_utils import methods as baselines
    from instructedit_utils.config.experiment import ExperimentConfig
    from instructedit_utils.evaluation.requests import task_requests
    from instructedit_utils.models.loading import resolve_preset

    model, tok = load_frozen_model(args)
    layers = resolve_preset(args.model).edit_layers or None
    splits = ExperimentConfig(run_dir=tempfile.gettempdir(), tasks=tuple(args.tasks)).splits(args.tasks)
    warm = task_requests(args.tasks, splits, 2, seed=args.seed + 1, instructions=True)
    out = {"model": args.model, "threads": args.threads, "edit_batch": args.edit_batch,
           "sketch_dim": args.sketch_dim, "runs": {}}
    if args.rss_records:  # first, so that the peak RSS is the collection's (ru_maxrss is the process's maximum)
        rss_requests = task_requests(args.tasks, splits, args.rss_records, seed=args.seed, instructions=True)
        out["collection"] = c = _collection(model, tok, rss_requests, warm, layers, args)
        print(f"collection: {c['vectors']} vectors ({len(args.tasks)} tasks x up to {args.rss_records} records x "
              f"{c['editors']} editors sharing the lower pass, rank {c['rank']}) in {c['seconds']:.0f} s "
              f"({c['vectors_per_s']:.1f}/s); peak RSS {c['peak_rss_gb']:.2f} GB (target <= 1.5 GB)", flush=True)
    requests = task_requests(args.tasks, splits, args.records, seed=args.seed, instructions=True)
    out["edits"] = len(requests)
    editors = ({"trained": baselines.build("mend", model, tok, editor_dir=args.editor).editor} if args.editor else
               {f"rank {r}": _editor(model, tok, r, args.seed, warm, layers) for r in args.ranks})
    for label, editor in editors.items():
        r = out["runs"][label] = _speed(editor, model, tok, requests, args)
        print(f"{label}: plain loop {r['plain loop_vectors_per_s']:.2f} | edit loop {r['edit loop_vectors_per_s']:.2f} "
              f"| batched {r['batched_vectors_per_s']:.2f} vectors/s -> {r['speedup_vs_plain_loop']:.1f}x the plain "
              f"loop (target >= 3x), {r['speedup_vs_edit_loop']:.1f}x the edit loop; max rel. difference of norms "
              f"and sketches: {r['max_rel_diff']:.1e}", flush=True)
    if "collection" in out and f"rank {out['collection']['rank']}" in out["runs"]:
        plain = out["runs"][f"rank {out['collection']['rank']}"]["plain loop_vectors_per_s"]
        out["collection"]["speedup_vs_plain_loop"] = out["collection"]["vectors_per_s"] / plain
        print(f"collection with shared lower passes: {out['collection']['speedup_vs_plain_loop']:.1f}x the plain "
              f"loop of the same rank")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
