"""``instructedit-train``: the editors of notebook 02 with a profile's parameters, without the notebook (sweeps, GPU
machines: ``accelerate launch -m instructedit_utils.training --profile gpu``)."""
from __future__ import annotations

import argparse
from typing import Sequence

from accelerate import PartialState

from ..config.parameters import add_arguments, config_from_args as notebook_config_from_args, parse_cli
from ..util.runs import RunFolder
from ..util.runtime import setup_torch
from .plan import training_configs
from .pool import train_editors, worker_threads

NOTEBOOK = "02_editor_training"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train the editors of notebook 02 with a profile's parameters, "
                                                 "without the notebook (same configuration, same run folder).")
    add_arguments(parser, "notebook 02")
    parser.add_argument("--editor", action="append",
                        help="which editor(s) to train: instructedit, mend, ke, a single-task editor such as "
                             "mend-counterfact, or with --single-task e.g. instructedit-counterfact (default: every "
                             "editor notebook 02 trains)")
    parser.add_argument("--single-task", action="store_true",
                        help="train one editor per training task (instructions on and off) instead")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def config_from_args(args: argparse.Namespace):
    """The configuration notebook 02 builds for the same profile and overrides."""
    return notebook_config_from_args(NOTEBOOK, args)


def main(argv: Sequence[str] | None = None) -> int:
    """Train the editors of notebook 02 with a profile's parameters, without the notebook."""
    parser = build_parser()
    args, cfg = parse_cli(parser, argv, config_from_args)
    configs = ({**cfg.single_task_configs(True), **cfg.single_task_configs(False)} if args.single_task
               else training_configs(cfg))
    unknown = set(args.editor or ()) - set(configs)
    if unknown:
        parser.error(f"unknown editor(s) {sorted(unknown)}; choose from {sorted(configs)}")
    processes = PartialState(cpu=cfg.model.device == "cpu")  # under `accelerate launch`: this process of several
    setup_torch(worker_threads(cfg.model.num_threads, processes.num_processes), cfg.seed)  # cores shared, not oversubscribed
    if processes.is_main_process:  # as the notebook does (chapter 4 reads the editors' config)
        RunFolder(cfg.run_dir).write_params(cfg.to_dict())
    model, tokenizer = cfg.model.load()
    chosen = {name: method for name, method in configs.items() if not args.editor or name in args.editor}
    # several launched processes train each editor together, one editor after the other (no pool of workers)
    train_editors(cfg, model, tokenizer, chosen, progress=not args.no_progress,
                  workers=1 if processes.num_processes > 1 else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
