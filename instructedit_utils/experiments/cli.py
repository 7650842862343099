"""``instructedit-eval SETTING``: one evaluation setting of :mod:`.settings` (or chapter 7's mixtures,
:mod:`.mixtures`, or chapter 8's streams and batches, :mod:`.sequential`) with the configuration its notebook builds
for a profile (notebook 03, 04, 06, 07 or 08), without the notebook."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from ..config.experiment import ExperimentConfig
from ..config.parameters import add_arguments, config_from_args as notebook_config_from_args, parse_cli
from ..training.plan import trained_plan
from ..util.runs import RunFolder, SettingsMismatch
from ..util.runtime import setup_torch
from ..evaluation.summaries import summarize
from . import mixtures, sequential
from .settings import NOTEBOOKS, SETTINGS, gradients, holdout, load_methods, multitask, transfer, unseen


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("setting", choices=SETTINGS)
    add_arguments(parser, "the setting's notebook (03 for multitask/holdout, 04 for unseen/transfer, 06 for gradients, "
                          "07 for mixtures, 08 for sequential)")
    parser.add_argument("--descriptions", help="external descriptions file (unseen setting; = -p descriptions_file=…)")
    return parser


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The configuration of ``instructedit-eval``: the one the setting's notebook builds for the same profile and
    overrides (:func:`instructedit_utils.config.parameters.notebook_config`). Validates a descriptions file."""
    extra = {"descriptions_file": args.descriptions} if args.descriptions else {}
    return notebook_config_from_args(NOTEBOOKS[args.setting], args, extra)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one evaluation setting with a profile's parameters (those of notebook 03 or 04), without the notebook."""
    parser = build_parser()
    # every parameter and the descriptions file are checked before a model loads
    args, cfg = parse_cli(parser, argv, config_from_args)
    setup_torch(cfg.model.num_threads, cfg.seed)
    RunFolder(Path(cfg.run_dir) / args.setting).write_params({**cfg.to_dict(), "setting": args.setting})
    model, tokenizer = cfg.model.load()
    model.requires_grad_(False)
    try:
        if args.setting == "mixtures":
            the_plan = trained_plan(cfg)
            _, summary = mixtures.evaluate(cfg, model, tokenizer, the_plan)
            groups = mixtures.gradients(cfg, model, tokenizer, the_plan)
            print(summary.pivot_table(index="method", columns=["task", "metric"], values="mean").round(3).to_string())
            print(f"[instructedit-eval] wrote {Path(cfg.run_dir) / mixtures.SETTING} and the editing areas of "
                  f"{len(groups)} editors in {Path(cfg.run_dir) / 'gradients'}")
            return 0
        if args.setting == "sequential":
            streams, batches = sequential.evaluate(cfg, model, tokenizer, load_methods(cfg, model, tokenizer))
            ended = [r for r in streams if r.get("when") == "retention" and r["after"] == r["stream/length"]]
            table = summarize(ended, by=("setting", "method", "stream/length"), metrics=["edit/acc", "loc/acc"])
            print(table.pivot_table(index=["setting", "method"], columns=["metric", "stream/length"],
                                    values="mean").round(3).to_string())
            print(f"[instructedit-eval] wrote {len(streams)} stream rows and {len(batches)} batch rows in "
                  f"{Path(cfg.run_dir) / sequential.STREAMS_DIR} and {Path(cfg.run_dir) / sequential.BATCHES_DIR}")
            return 0
        if args.setting == "gradients":
            for group, areas in gradients(cfg, model, tokenizer).items():
                print(f"{group}: {len(areas.manifest)} editing areas, tasks {sorted(set(areas.manifest['task']))}")
            print(f"[instructedit-eval] wrote {Path(cfg.run_dir) / 'gradients'}")
            return 0
        run = {"multitask": multitask, "holdout": holdout, "unseen": unseen, "transfer": transfer}[args.setting]
        _, summary = run(cfg, model, tokenizer)
    except SettingsMismatch as exc:  # a run folder of other settings: say which, no traceback
        parser.exit(2, f"instructedit-eval: error: {exc}\n")
    print(summary.to_string())
    print(f"[instructedit-eval] wrote {Path(cfg.run_dir) / args.setting}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
