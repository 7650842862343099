"""Benchmark of chapter-2-style training: two editors one after the other (one process, ``--threads`` threads) against
the same two editors as two worker processes (``training.train_editors``, ``--threads // 2`` threads each).

Each editor is the ``cpu`` profile's configuration of notebook 02 (its parameters cell: rank 256, 3 locality probes,
ConvSent in the mixture) for ``--steps`` steps, with validation only at the end (``val_every = steps``) and few
validation records, so the time is mostly training steps. Both runs start from empty folders in a temporary directory
and must end with the same editors (checked, float tolerance).

    python benchmarks/bench_workers.py --steps 40 --threads 2

Prints one JSON object. Nothing here is a test.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2, help="threads in all (the workers share them)")
    parser.add_argument("--editors", nargs="+", default=["instructedit", "mend"])
    args = parser.parse_args()

    import torch

    from instructedit_utils import setup_torch
    from instructedit_utils.training import pool as training
    from instructedit_utils.config.experiment import parameters
    from instructedit_utils.models.loading import load_model

    root = Path(tempfile.mkdtemp(prefix="bench_workers_"))
    base = parameters.notebook_config("02_editor_training", "cpu", {"num_threads": args.threads})
    method = dataclasses.replace(base.method, steps=args.steps, val_every=args.steps, val_records_per_task=2,
                                 norm_warmup=5, patience=0)
    base = dataclasses.replace(base, method=method)
    configs = {n: c for n, c in base.editor_configs().items() if n in args.editors}
    setup_torch(args.threads, 0)
    model, tok = load_model(base.model.name)
    model.requires_grad_(False)
    out = {"steps": args.steps, "threads": args.threads, "editors": list(configs)}
    results = {}
    for mode, workers in (("sequential", 1), ("workers", len(configs))):
        cfg = dataclasses.replace(base, run_dir=str(root / mode), workers=workers)
        t0 = time.perf_counter()
        results[mode] = training.train_editors(cfg, model, tok, configs, log=None)
        out[f"{mode}_wall_s"] = time.perf_counter() - t0
    out["speedup"] = out["sequential_wall_s"] / out["workers_wall_s"]
    out["same_editors"] = all(
        torch.allclose(a.double(), b.double(), rtol=1e-4, atol=1e-6)
        for name in configs
        for a, b in zip(results["sequential"][name].editor.state_dict().values(),
                        results["workers"][name].editor.state_dict().values()))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
