"""The evaluation harness: registry, split scoring == plain scoring, resume, instruction switch, aggregation."""
import dataclasses
import json

import pandas as pd
import pytest
import torch

from instructedit_utils.analysis import table1
from instructedit_utils.analysis import unseen
from instructedit_utils.data import instructions
from instructedit_utils.evaluation import harness
from instructedit_utils.evaluation import harness as evaluation
from instructedit_utils.evaluation import scoring
from instructedit_utils.experiments import cli as eval_cli
from instructedit_utils.experiments import settings
from instructedit_utils.experiments import settings as experiments
from instructedit_utils.methods import registry as baselines
from instructedit_utils.training import pool as training
from instructedit_utils.training import plan
from instructedit_utils.config.experiment import ExperimentConfig
from instructedit_utils.config.method import MethodConfig
from instructedit_utils.data.tasks import load_task
from instructedit_utils.methods.mend import MendEditor
from instructedit_utils.evaluation.requests import build_requests
from instructedit_utils.evaluation.harness import evaluate_method
from instructedit_utils.evaluation.summaries import paired_difference, summarize
from instructedit_utils.models.forward import FullForward
from instructedit_utils.models.forward import SplitForward
from instructedit_utils.models.batches import score_split
from instructedit_utils.models.metrics import encode_pair, score_encoded
from instructedit_utils.util.runs import RunFolder, SettingsMismatch
from helpers import tiny_editor


def test_experiment_rerun_with_other_settings_is_refused(tmp_path, monkeypatch, tiny_llama, cf_records,
                                                        shared_data):
    model, tok = tiny_llama
    monkeypatch.setattr(experiments, "task_requests",
                        lambda tasks, split, n, **kw: build_requests(cf_records, instructions=kw["instructions"],
                                                                     seed=0))
    methods = {"base": baselines.build("base", model, tok)}
    cfg = ExperimentConfig(run_dir=str(tmp_path), tasks=("counterfact",), sample_per_task=2, fluency_max_new_tokens=0)
    first, _ = settings.multitask(cfg, model, tok, methods)
    again, _ = settings.multitask(cfg, model, tok, methods)  # same settings: resumed, nothing redone
    assert again == first
    stored = json.loads((tmp_path / "multitask" / "cases_base.settings.json").read_text())["settings"]
    assert stored["splits"] == {"counterfact": "test"} and stored["model"]["name"] == "smollm2-135m"
    assert "wiki_counterfact/DERIVED_wiki_counterfact_test_cf-generate-10.jsonl" in stored["data"]
    changed = dataclasses.replace(cfg, sample_per_task=3, max_probes=1)
    with pytest.raises(SettingsMismatch) as err:
        settings.multitask(changed, model, tok, methods)
    assert "cases_base.jsonl" in str(err.value)
    assert "sample_per_task: 2 → 3" in str(err.value) and "scoring/max_probes: 3 → 1" in str(err.value)


def test_methods_evaluated_in_worker_processes_equal_one_process(tiny_llama, tmp_path, shared_data, monkeypatch):
    from instructedit_utils.config.experiment import ModelConfig

    model, tok = tiny_llama
    model.requires_grad_(False)
    original, written = experiments.evaluate_in_workers, {}

    def spy(setting, jobs, methods):  # what the workers left in the run folder before this process evaluates
        original(setting, jobs, methods)
        cfg = jobs[0].cfg
        folder = RunFolder(f"{cfg.run_dir}/{setting}")
        written[cfg.workers] = {m: len(folder.done_ids(f"cases_{m}")) for m in cfg.methods}

    monkeypatch.setattr(experiments, "evaluate_in_workers", spy)

    def run(name, workers):
        cfg = ExperimentConfig(run_dir=str(tmp_path / name / "03"), model=ModelConfig(name="tiny-llama", num_threads=2),
                               tasks=("counterfact",), holdout_tasks=(), sample_per_task=2,
                               methods=("base", "ft-l", "grace"), fluency_max_new_tokens=0, workers=workers,
                               method_options={"ft-l": {"steps": 3}, "grace": {"steps": 3}})
        return settings.multitask(cfg, model, tok, settings.load_methods(cfg, model, tok))[0]

    one, two = run("seq", 1), run("par", 2)
    key = lambda c: (c["method"], c["case_id"])  # noqa: E731
    one, two = sorted(one, key=key), sorted(two, key=key)
    assert [key(c) for c in one] == [key(c) for c in two] and len(one) == 6
    for a, b in zip(one, two):
        for metric in ("edit/acc", "gen/acc", "loc/acc", "base/edit/acc"):
            assert a.get(metric) == pytest.approx(b.get(metric), abs=1e-6), (key(a), metric)
    assert written[2] == {"base": 2, "ft-l": 2, "grace": 2}  # the workers computed every case
    assert written[1] == {"base": 0, "ft-l": 0, "grace": 0}  # one worker: this process computes them


def test_transfer_loads_the_single_task_editors_chapter_2_trained(tiny_llama, tmp_path, shared_data):
    """Chapter 2 trains Table 1's single-task editors in its pool (training_configs); chapter 4's transfer loads them
    from chapter 2's run folder by the names its params.json implies, and says what to run when they are missing."""
    from instructedit_utils.config.experiment import ModelConfig

    model, tok = tiny_llama
    model.requires_grad_(False)
    ch2 = ExperimentConfig(run_dir=str(tmp_path / "02_editor_training"), model=ModelConfig(name="tiny-llama"),
                           method=MethodConfig(name="m", tasks=("counterfact", "recent"), rank=8, steps=3,
                                               val_every=3, val_records_per_task=2, norm_warmup=2),
                           single_task_steps=2, workers=1)
    ch4 = ExperimentConfig(run_dir=str(tmp_path / "04_unseen_instructions"), model=ModelConfig(name="tiny-llama"),
                           tasks=("counterfact", "recent"), sample_per_task=2, methods=("instructedit",),
                           fluency_max_new_tokens=0, workers=1)
    with pytest.raises(FileNotFoundError, match="run notebook 02_editor_training first"):
        settings.single_task_names(ch4)
    RunFolder(ch2.run_dir).write_params(ch2.to_dict())
    assert settings.single_task_names(ch4) == ["mend-counterfact", "mend-recent"]
    with pytest.raises(FileNotFoundError, match="No finished editor 'mend-counterfact'"):
        settings.transfer(ch4, model, tok)
    singles = {n: c for n, c in plan.training_configs(ch2).items() if n.startswith("mend-")}
    trained = training.train_editors(ch2, model, tok, singles, log=None)
    assert {n: r.summary["step"] for n, r in trained.items()} == {"mend-counterfact": 2, "mend-recent": 2}
    cases, summary = settings.transfer(ch4, model, tok)
    # Table 1's test tasks (transfer_tasks: CounterFact and ZsRE, its test split) and each editor's own task
    assert {(c["train_task"], c["task"]) for c in cases} == {("counterfact", "counterfact"), ("counterfact", "zsre"),
                                                             ("recent", "counterfact"), ("recent", "zsre"),
                                                             ("recent", "recent")}
    assert all(c["case_id"].startswith("zsre/") for c in cases if c["task"] == "zsre")
    zsre_test = {r.record_id for r in load_task("zsre", "test")}
    assert {c["case_id"] for c in cases if c["task"] == "zsre"} <= zsre_test
    assert {c["editor"] for c in cases} == {settings.load_methods(ch4, model, tok, [n])[n].fingerprint
                                            for n in singles}


def _instructed_editor_folder(model, folder):
    """A saved (untrained) instructed editor as chapter 2 leaves one: ``<folder>/instructedit``."""
    tiny_editor(model).save(folder / "instructedit")
    (folder / "instructedit" / "done.json").write_text(json.dumps({"step": 0, "best_step": 0, "stop_reason": "steps"}))
    return folder


def _two_by_two_descriptions(tmp_path):
    path = tmp_path / "descriptions.json"
    path.write_text(json.dumps({"counterfact": ["Swap the fact for the new object.", "Answer with the edited object."],
                                "zsre": ["Give the edited answer to the question.", "Reply with the new answer."]}))
    return path


def _external_conditions(summary):
    ext = summary[summary["condition"].str.startswith("external") & (summary["metric"] == "edit/acc")]
    return sorted(zip(ext["task"], ext["condition"]))


def test_unseen_external_descriptions_of_several_tasks_from_the_command_line(tiny_llama, tmp_path, shared_data,
                                                                             capsys):
    """Issue 31: every task's i-th external description used to share ``cases_<editor>_external<i>``, so the second
    task's cases were refused as scored with other settings."""
    model, _ = tiny_llama
    editors = _instructed_editor_folder(model, tmp_path / "editors")
    argv = ["unseen", "--profile", "ci", "--runs-dir", str(tmp_path / "runs"), "--descriptions",
            str(_two_by_two_descriptions(tmp_path)), "-p", "model_name=tiny-llama", "-p", f"editors_dir={editors}",
            "-p", "workers=1", "-p", "num_threads=1", "-p", "sample_per_task=2"]
    assert eval_cli.main(argv) == 0
    folder = tmp_path / "runs" / "ci" / "04_unseen_instructions" / "unseen"
    summary = pd.read_csv(folder / "summary.csv", index_col=0)
    assert _external_conditions(summary) == [("counterfact", "external0"), ("counterfact", "external1"),
                                             ("zsre", "external0"), ("zsre", "external1")]
    assert {p.name for p in folder.glob("cases_instructedit_external*.jsonl")} == {
        f"cases_instructedit_external{i}_{t}.jsonl" for i in (0, 1) for t in ("counterfact", "zsre")}
    capsys.readouterr()
    assert eval_cli.main(argv) == 0  # resumed: every case file is already complete
    assert "wrote" in capsys.readouterr().out


def test_unseen_external_descriptions_of_several_tasks_through_the_notebook(tiny_llama, tmp_path, shared_data):
    model, tok = tiny_llama
    editors = _instructed_editor_folder(model, tmp_path / "editors")
    cfg = ExperimentConfig.from_parameters(  # as chapter 4's config cell builds it
        profile="ci", run_dir=str(tmp_path / "04"), model_name="tiny-llama", num_threads=1, editors_dir=str(editors),
        tasks=["counterfact"], holdout_tasks=["zsre"], methods=["instructedit"], workers=1, sample_per_task=2,
        fluency_max_new_tokens=0, descriptions_file=str(_two_by_two_descriptions(tmp_path)))
    cases, summary = settings.unseen(cfg, model, tok)
    assert _external_conditions(summary) == [("counterfact", "external0"), ("counterfact", "external1"),
                                             ("zsre", "external0"), ("zsre", "external1")]
    texts = {(c["task"], c["condition"]): c["instruction"] for c in cases if c["condition"].startswith("external")}
    assert texts[("zsre", "external1")] == "Reply with the new answer."
    again, _ = settings.unseen(cfg, model, tok)  # resumes from the case files
    assert len(again) == len(cases)
