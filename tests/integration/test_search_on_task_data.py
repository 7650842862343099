"""The instruction search (chapter 5): filters, selection, stopping, resume, the endpoint generator against a stub
server, the trial editor's scores, and the chosen pool going back into the trainer and ``--descriptions``."""
import dataclasses
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from instructedit_utils.methods import registry as baselines
from instructedit_utils.search import loop as search_mod
from instructedit_utils.training import step
from instructedit_utils.training import trainer
from instructedit_utils.training import trainer as training
from instructedit_utils.training import validation
from instructedit_utils.config.experiment import ExperimentConfig, ModelConfig
from instructedit_utils.config.method import MethodConfig
from instructedit_utils.config.studies import SearchConfig
from instructedit_utils.search.generators import (EndpointError, EndpointGenerator, LocalGenerator, build_messages,
                                                  parse_candidates)
from instructedit_utils.search.filters import LeakIndex, check_candidate, similarity
from instructedit_utils.search.loop import Candidate, choose_pool, generation_seed, stop_reason
from instructedit_utils.data.instructions import InstructionPool, default_pool, fill_slots, load_pool, read_descriptions
from instructedit_utils.util.runs import SettingsMismatch
from helpers import Stub


GOOD = {"counterfact": ["Swap the stored fact for the requested new one", "Answer with the replaced object only",
                        "Give the new counterfactual value as the answer"],
        "convsent": ["Reply about [TOPIC] in a clearly [LABEL] tone", "Speak of [TOPIC] with [LABEL] feelings now",
                     "Sound [LABEL] each time [TOPIC] is mentioned here"]}


SCORES = {GOOD["counterfact"][0]: 0.95, GOOD["counterfact"][1]: 0.2, GOOD["counterfact"][2]: 0.97,
          GOOD["convsent"][0]: 0.9, GOOD["convsent"][1]: 0.1, GOOD["convsent"][2]: 0.92}


TASKS = ("counterfact", "convsent")


class FakeGenerator:
    """Deterministic replies per (round, task), read from the seed the search passes; counts its calls."""

    label = "fake"

    def __init__(self, seed=0, fail_at_round=None):
        self.by_seed = {generation_seed(seed, r, i): (r, t) for r in range(1, 10) for i, t in enumerate(TASKS)}
        self.fail_at_round, self.calls = fail_at_round, []

    def generate(self, messages, n, seed):
        round_, task = self.by_seed[seed]
        if round_ == self.fail_at_round:
            raise RuntimeError("generator killed")
        self.calls.append((round_, task))
        good = GOOD[task][round_ - 1] if round_ <= 3 else "Too short"
        return ([f"1. {good}\n2. Tiny\n3. {default_pool().held_out(task)[0]}\n4. {default_pool().seen(task)[0]}"]
                + ["Also tiny"] * (n - 1))


def fake_scores(cfg, method, model, tokenizer, candidates):
    for c in candidates:
        c.score = SCORES.get(c.text, 0.5 - 0.01 * c.index)
        c.ci_low, c.ci_high, c.n, c.status = c.score - 0.1, c.score + 0.1, 2, "scored"


def _search_cfg(tmp_path, name="05", **search):
    base = dict(search_tasks=TASKS, samples_per_round=2, pool_size=3, max_rounds=4, search_patience=1,
                min_delta=0.01, val_records=2, min_words=4)
    return ExperimentConfig(run_dir=str(tmp_path / name), model=ModelConfig(name="tiny-llama"),
                            methods=("instructedit",), workers=1, sample_per_task=2, fluency_max_new_tokens=0,
                            search=SearchConfig(**{**base, **search}))


@pytest.fixture
def instructed(tiny_llama):

    model, tok = tiny_llama
    return baselines.build("base", model, tok, name="instructedit", use_instructions=True)


def test_search_selects_filters_stops_and_writes_a_pool_file(tiny_llama, instructed, tmp_path, shared_data,
                                                             monkeypatch):
    monkeypatch.setattr(search_mod, "score_candidates", fake_scores)
    model, tok = tiny_llama
    gen = FakeGenerator()
    result = search_mod.run_search(_search_cfg(tmp_path), model, tok, gen, instructed, log=None)
    hist = result.history()
    r0 = hist[hist["round"] == 0]
    assert len(r0) == 18 and set(r0["source"]) == {"hand-written"}  # the 9 seen descriptions of each task
    reasons = hist[hist["status"] == "rejected"].groupby("round")["reason"].apply(list)
    assert all(any(r.startswith("length: 1 words") for r in rs) for rs in reasons)
    assert all(any(r == "duplicate of a held-out description" for r in rs) for rs in reasons)
    # round 1 and 3 bring a new best per task, round 2 only a bad one, round 4 nothing: stops after 4 (patience 1)
    assert [r["round"] for r in result.rounds] == [0, 1, 2]
    assert result.stop == "no improvement above 0.01 for 1 round(s)"
    assert result.pool.seen("counterfact") == (GOOD["counterfact"][0], *default_pool().seen("counterfact")[:2])
    assert result.pool.held_out("convsent") == default_pool().held_out("convsent")
    assert result.pool.descriptions["zsre"] == default_pool().descriptions["zsre"]  # not searched: unchanged
    assert all(any(r == "duplicate of hand-written description" for r in rs) for rs in reasons)
    chosen = hist[hist["chosen"]]  # the scored candidates of the pool, not their rejected repeats
    assert len(chosen) == 6 and set(chosen["status"]) == {"scored"}
    assert set(chosen["text"]) == {d for t in TASKS for d in result.pool.seen(t)}
    assert InstructionPool.from_file(result.pool_path) == result.pool == load_pool(result.pool_path)
    stats = [r["statistic"] for r in result.rounds]
    assert stats == sorted(stats)  # a pool of the best so far never gets worse
    assert gen.calls == [(1, "counterfact"), (1, "convsent"), (2, "counterfact"), (2, "convsent")]


def test_search_resumes_from_the_last_finished_round(tiny_llama, instructed, tmp_path, shared_data, monkeypatch):
    monkeypatch.setattr(search_mod, "score_candidates", fake_scores)
    model, tok = tiny_llama
    whole = search_mod.run_search(_search_cfg(tmp_path, "whole"), model, tok, FakeGenerator(), instructed, log=None)
    cfg = _search_cfg(tmp_path, "killed")
    with pytest.raises(RuntimeError, match="generator killed"):
        search_mod.run_search(cfg, model, tok, FakeGenerator(fail_at_round=2), instructed, log=None)
    assert sorted(p.name for p in (tmp_path / "killed" / "search").glob("round_*")) == [
        "round_00.json", "round_01.generated.json", "round_01.json"]
    again = FakeGenerator()
    resumed = search_mod.run_search(cfg, model, tok, again, instructed, log=None)
    assert again.calls == [(2, "counterfact"), (2, "convsent")]  # rounds 0 and 1 were read, not redone
    assert resumed.pool == whole.pool and resumed.history().equals(whole.history())

    # a round generated but not scored is scored from its file: the generator is not asked again
    cfg2 = _search_cfg(tmp_path, "unscored")

    def scores_fail_late(cfg_, method, model_, tok_, candidates):
        if candidates and candidates[0].round == 1:
            raise KeyboardInterrupt
        fake_scores(cfg_, method, model_, tok_, candidates)

    monkeypatch.setattr(search_mod, "score_candidates", scores_fail_late)
    with pytest.raises(KeyboardInterrupt):
        search_mod.run_search(cfg2, model, tok, FakeGenerator(), instructed, log=None)
    monkeypatch.setattr(search_mod, "score_candidates", fake_scores)
    no_round_1 = FakeGenerator(fail_at_round=1)
    assert search_mod.run_search(cfg2, model, tok, no_round_1, instructed, log=None).pool == whole.pool

    with pytest.raises(SettingsMismatch, match="search/pool_size: 3 → 4"):
        search_mod.run_search(_search_cfg(tmp_path, "whole", pool_size=4), model, tok, FakeGenerator(), instructed,
                              log=None)


def _tiny_editor(tmp_path, model, tok, **over):
    config = MethodConfig(**{**dict(name="instructedit", tasks=TASKS, rank=8, steps=2, val_every=2,
                                    val_records_per_task=2, norm_warmup=2, log_every=1), **over})
    return trainer.train_editor(model, tok, config, tmp_path / "02" / config.name, progress=False, log=None)


def test_trial_editor_scores_and_the_pool_goes_back_into_the_trainer(tiny_llama, tmp_path, shared_data,
                                                                     monkeypatch):
    model, tok = tiny_llama
    model.requires_grad_(False)
    trained = _tiny_editor(tmp_path, model, tok)
    cfg = dataclasses.replace(_search_cfg(tmp_path, max_rounds=1, finetune_steps=1), editors_dir=str(tmp_path / "02"))
    result = search_mod.run_search(cfg, model, tok, FakeGenerator(), log=None)
    scored = result.history().query("status == 'scored'")
    assert len(scored) == 18 + 2 and scored["score"].between(0, 1).all() and (scored["n"] == 2).all()
    assert (scored["ci_low"] <= scored["score"]).all() and (scored["score"] <= scored["ci_high"]).all()
    assert len(list((tmp_path / "05" / "search").glob("cases_instructedit_r01_*.jsonl"))) == 2

    # the pool file: the trainer's validation and training requests draw from it, --descriptions reads it
    path = str(result.pool_path)
    ft = dataclasses.replace(trained.editor.config, name="ft", steps=1, val_every=1, instructions_file=path,
                             init_editor=str(tmp_path / "02" / "instructedit"))
    pool = load_pool(path)
    assert {r.description for r in validation.validation_requests(ft) if r.task == "counterfact"} <= set(
        pool.seen("counterfact"))
    seen = []
    original = step.make_example  # the trainer builds its examples through step.example_of
    monkeypatch.setattr(step, "make_example", lambda req, *a: seen.append(req) or original(req, *a))
    start = trainer.train_editor(model, tok, ft, tmp_path / "ft", progress=False, log=None, stop_after=0)
    assert all(torch_equal(start.editor.state_dict(), trained.editor.state_dict()))  # starts from the trial editor
    trainer.train_editor(model, tok, ft, tmp_path / "ft", progress=False, log=None)
    assert seen and all(r.description == fill_slots(pool.descriptions[r.task][r.description_index], r.record)
                        for r in seen)
    assert read_descriptions(path, ("counterfact", "recent")) == {"counterfact": list(pool.seen("counterfact")),
                                                                  "recent": list(pool.seen("recent"))}
    with pytest.raises(ValueError, match="another architecture"):
        trainer.train_editor(model, tok, dataclasses.replace(ft, name="ft2", rank=4), tmp_path / "ft2",
                              progress=False, log=None)

    finetuned = search_mod.finetune(cfg, model, tok, result, log=None)  # one step on the chosen pool
    done = json.loads((tmp_path / "05" / "editors" / "instructedit-searched" / "done.json").read_text())
    assert finetuned.name == "instructedit-searched" and done["step"] == 1
    assert finetuned.editor.config.instructions_file == path and finetuned.editor.config.init_editor.endswith(
        "instructedit")
    cases, diffs = search_mod.compare_pools(cfg, model, tok, result, finetuned=finetuned)
    assert {c["condition"] for c in cases} == {search_mod.HAND, search_mod.OPTIMISED, search_mod.FINETUNED}
    overall = diffs[(diffs["metric"] == search_mod.SCORE) & (diffs["task"] == "all tasks")]
    assert list(overall["b"]) == [search_mod.OPTIMISED, search_mod.FINETUNED] and set(overall["n"]) == {4}
    word, row = search_mod.verdict(diffs)
    assert word == "not resolved (n < 20)" and row["ci_low"] <= row["diff"] <= row["ci_high"]  # 4 records decide nothing
    text = search_mod.summary_markdown(cfg, result, diffs, finetuned=True, where="runs/x")
    assert f"**{word}**" in text and "fine-tuned on the optimised pool for 1 steps" in text and "`runs/x`" in text


def torch_equal(a, b):
    import torch

    return [torch.equal(a[k], b[k]) for k in a]


def test_search_with_the_endpoint_generator_reads_the_environment(tiny_llama, instructed, tmp_path, shared_data,
                                                                   monkeypatch):
    monkeypatch.setattr(search_mod, "score_candidates", fake_scores)
    model, tok = tiny_llama

    def reply(body):
        task = "convsent" if "ConvSent" in body["messages"][-1]["content"] else "counterfact"
        return {"choices": [{"message": {"content": f"1. {GOOD[task][0]}\n2. Tiny"}}] * body["n"]}

    with Stub([(200, reply, 0, {})]) as stub:
        monkeypatch.setenv("INSTRUCTEDIT_LLM_BASE_URL", stub.url)
        monkeypatch.setenv("INSTRUCTEDIT_LLM_MODEL", "stub-model")
        monkeypatch.setenv("INSTRUCTEDIT_LLM_API_KEY", "sk-env")
        cfg = _search_cfg(tmp_path, generator="endpoint", max_rounds=1)
        result = search_mod.run_search(cfg, model, tok, None, instructed, log=None)
    r1 = result.history().query("round == 1")
    assert set(r1["source"]) == {f"stub-model at {stub.url}"} and len(stub.requests) == 2
    assert {r["auth"] for r in stub.requests} == {"Bearer sk-env"}
    assert result.pool.seen("counterfact")[0] == GOOD["counterfact"][0]
    assert "sk-env" not in (tmp_path / "05" / "search" / "search_settings.json").read_text()

    with Stub([(200, b"<html>oops</html>", 0, {})]) as stub:  # a broken endpoint stops the search, saying why
        monkeypatch.setenv("INSTRUCTEDIT_LLM_BASE_URL", stub.url)
        with pytest.raises(EndpointError, match="not JSON"):
            search_mod.run_search(_search_cfg(tmp_path, "broken", generator="endpoint"), model, tok, None,
                                  instructed, log=None)
    assert sorted(p.name for p in (tmp_path / "broken" / "search").glob("round_*")) == ["round_00.json"]
