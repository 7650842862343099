"""``instructedit-search``: chapter 5's loop (:mod:`.loop`) with the configuration notebook 05 builds for a profile,
without the notebook."""
from __future__ import annotations

import argparse
from typing import Sequence

from ..config.experiment import ExperimentConfig
from ..config.parameters import add_arguments, parse_cli
from ..config.parameters import config_from_args as notebook_config_from_args
from ..util.runs import RunFolder, SettingsMismatch
from ..util.runtime import setup_torch
from .generators import EndpointError
from .loop import NOTEBOOK, compare_pools, finetune, run_search, verdict


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instructedit-search", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The instruction search of chapter 5 without the notebook: generate, filter and score "
                    "descriptions with the trained editor, write the chosen pool (<run>/pool.json) and compare it "
                    "with the hand-written pool on test records.",
        epilog="Examples:\n  instructedit-search --profile cpu\n  INSTRUCTEDIT_LLM_BASE_URL=http://127.0.0.1:8000/v1 "
               "INSTRUCTEDIT_LLM_MODEL=my-model instructedit-search -p generator=endpoint\n"
               "  instructedit-train --profile cpu -p instructions_file=runs/cpu/05_instruction_search/pool.json")
    add_arguments(parser, f"notebook {NOTEBOOK}")
    parser.add_argument("--no-compare", action="store_true", help="stop after the search (no test-record comparison)")
    return parser


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The configuration notebook 05 builds for the same profile and overrides."""
    return notebook_config_from_args(NOTEBOOK, args)


def main(argv: Sequence[str] | None = None) -> int:
    """Search, then compare the pools, with a profile's parameters (those of notebook 05), without the notebook."""
    parser = build_parser()
    args, cfg = parse_cli(parser, argv, config_from_args)
    setup_torch(cfg.model.num_threads, cfg.seed)
    RunFolder(cfg.run_dir).write_params(cfg.to_dict())
    model, tokenizer = cfg.model.load()
    model.requires_grad_(False)
    try:
        result = run_search(cfg, model, tokenizer)
    except (EndpointError, SettingsMismatch) as exc:
        parser.exit(2, f"instructedit-search: error: {exc}\n")
    print(result.round_table().round(3).to_string(index=False))
    print(f"[instructedit-search] {result.stop}; wrote {result.pool_path}")
    if not args.no_compare:
        _, diffs = compare_pools(cfg, model, tokenizer, result, finetuned=finetune(cfg, model, tokenizer, result))
        word, row = verdict(diffs)
        print(diffs.round(4).to_string(index=False))
        print(f"[instructedit-search] optimised − hand-written score {row['diff']:+.3f} "
              f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}] over {row['n']} records: {word}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
