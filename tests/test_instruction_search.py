"""The instruction search (chapter 5): filters, selection, stopping, resume, the endpoint generator against a stub
server, the trial editor's scores, and the chosen pool going back into the trainer and ``--descriptions``."""
import dataclasses
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from instructedit_utils import instruction_search as search_mod
from instructedit_utils import training
from instructedit_utils.config import ExperimentConfig, MethodConfig, ModelConfig, SearchConfig
from instructedit_utils.generators import (EndpointError, EndpointGenerator, LocalGenerator, build_messages,
                                           parse_candidates)
from instructedit_utils.instruction_filters import LeakIndex, check_candidate, similarity
from instructedit_utils.instruction_search import Candidate, choose_pool, generation_seed, stop_reason
from instructedit_utils.instructions import InstructionPool, default_pool, fill_slots, load_pool, read_descriptions
from instructedit_utils.runs import SettingsMismatch

FILTER = dict(min_words=4, max_words=12, max_similarity=0.6)


# --------------------------------------------------------------------------------------------------------------------
# Filters, parsing, selection and stopping on hand-made cases
# --------------------------------------------------------------------------------------------------------------------


def test_parse_candidates_strips_numbering_bullets_and_quotes():
    reply = ('1. "Edit the fact."\n\n- Replace the answer\n2) Change it now\n• “Quoted one”\nDescription 3: last one\n'
             '(0.62) Echoed score\n0.83. Another echo\n1. (0.5) Both')
    assert parse_candidates(reply) == ["Edit the fact.", "Replace the answer", "Change it now", "Quoted one",
                                       "last one", "Echoed score", "Another echo", "Both"]


def test_similarity_on_hand_computed_bigrams():
    assert similarity("a b c", "A, b c!") == 1.0
    assert similarity("a b c", "d e f") == 0.0
    assert similarity("a b c", "a b d") == pytest.approx(1 / 3)  # {ab, bc} vs {ab, bd}: 1 shared of 3


def test_filters_give_each_rejection_its_reason(cf_records):
    leaks = LeakIndex(cf_records, n=4)
    known = {"replace the answer with the new object": "the held-out description"}
    near = {"Replace the answer with the new object": "the held-out description"}

    def check(text, task="counterfact"):
        return check_candidate(text, task, known=known, near=near, leaks=leaks, **FILTER)

    assert check("Short one") == "length: 2 words (allowed 4-12)"
    assert check(" ".join(["word"] * 13)).startswith("length: 13 words")
    assert check("Make it [LABEL] about the subject") == "slot [LABEL] cannot be filled from counterfact records"
    assert check("Be [LABEL] when you talk", "convsent") == "missing slot [TOPIC]"
    assert check("Replace the answer, with the NEW object!") == "duplicate of the held-out description"
    assert check("Please replace the answer with the new object").startswith("near-duplicate (0.8")
    assert check("Say the name of the father of Leonardo") is not None  # a locality prompt is not test text …
    assert check("Answer the country of citizenship of Leonardo DiCaprio").startswith("copies test record counterfact/")
    assert check("Answer about Leonardo DiCaprio now please").startswith("copies test record")  # a 2-word subject
    assert check("Edit the stored fact and reply with it") is None
    shown = LeakIndex(cf_records[1:], n=4, common=2)  # a training record the prompt showed
    assert check_candidate("Answer what Paris is the capital of now", "counterfact", known={}, near={}, leaks=None,
                           examples=shown, **FILTER).startswith("copies prompt example counterfact/hand/1 (")
    assert check("Be [LABEL] whenever [TOPIC] comes up", "convsent") is None


def test_text_shared_by_many_test_records_is_not_a_leak(cf_records):
    records = [dataclasses.replace(cf_records[1], index=i, prompt=f"What do you think of item{i}?",
                                   subject=f"item{i}") for i in range(12)]
    assert LeakIndex(records, n=4).find("Tell me what do you think of the edit") is None
    assert LeakIndex(records[:3], n=4).find("Tell me what do you think of the edit")[1] == "what do you think"


def test_choose_pool_keeps_the_best_scored_per_task_ties_to_the_earlier():
    cands = [Candidate("a", 0, 0, "x", "h", "scored", score=0.5), Candidate("a", 1, 0, "y", "g", "scored", score=0.7),
             Candidate("a", 1, 1, "z", "g", "rejected", reason="r"),
             Candidate("a", 2, 0, "w", "g", "scored", score=0.5), Candidate("b", 0, 0, "v", "h", "scored", score=0.1)]
    pool = choose_pool(cands, ("a", "b"), 2)
    assert [c.text for c in pool["a"]] == ["y", "x"] and [c.text for c in pool["b"]] == ["v"]


def test_stop_reason_patience_threshold_and_round_limit():
    assert stop_reason([0.5], 3, 1, 0.01) is None
    assert stop_reason([0.5, 0.6], 3, 1, 0.01) is None
    assert stop_reason([0.5, 0.505], 3, 1, 0.01) == "no improvement above 0.01 for 1 round(s)"
    assert stop_reason([0.5, 0.505, 0.6], 5, 2, 0.01) is None  # the stale round was followed by a gain
    assert stop_reason([0.5, 0.6, 0.7, 0.8], 3, 1, 0.01) == "round limit (3)"


def test_search_config_is_validated():
    for bad in (dict(generator="gpt"), dict(search_tasks=()), dict(pool_size=0), dict(max_similarity=0),
                dict(score_weights={"edit/acc": -1}), dict(score_weights={"fluency": 1}), dict(stop_on="median"),
                dict(min_words=10, max_words=5)):
        with pytest.raises(ValueError):
            SearchConfig(**bad)
    assert SearchConfig(score_weights={"edit/acc": 3, "loc/acc": 1}).weights() == {"edit/acc": 0.75, "loc/acc": 0.25}


def test_prompt_names_the_task_slots_examples_and_scores(convsent_records):
    msgs = build_messages("convsent", "ConvSent", convsent_records[:1], [("Be [LABEL] on [TOPIC].", 0.61)], 3)
    user = msgs[-1]["content"]
    assert "[LABEL] (the target sentiment) and [TOPIC]" in user and "(0.61) Be [LABEL] on [TOPIC]." in user
    assert "What do you think of Moscow?" in user and msgs[0]["role"] == "system"


# --------------------------------------------------------------------------------------------------------------------
# The loop, with a fake generator and scores looked up from a table
# --------------------------------------------------------------------------------------------------------------------

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
    from instructedit_utils import baselines

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


# --------------------------------------------------------------------------------------------------------------------
# The real trial editor, the chosen pool in the trainer, fine-tuning, and the comparison
# --------------------------------------------------------------------------------------------------------------------


def _tiny_editor(tmp_path, model, tok, **over):
    config = MethodConfig(**{**dict(name="instructedit", tasks=TASKS, rank=8, steps=2, val_every=2,
                                    val_records_per_task=2, norm_warmup=2, log_every=1), **over})
    return training.train_editor(model, tok, config, tmp_path / "02" / config.name, progress=False, log=None)


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
    assert {r.description for r in training.validation_requests(ft) if r.task == "counterfact"} <= set(
        pool.seen("counterfact"))
    seen = []
    original = training.make_example
    monkeypatch.setattr(training, "make_example", lambda req, *a: seen.append(req) or original(req, *a))
    start = training.train_editor(model, tok, ft, tmp_path / "ft", progress=False, log=None, stop_after=0)
    assert all(torch_equal(start.editor.state_dict(), trained.editor.state_dict()))  # starts from the trial editor
    training.train_editor(model, tok, ft, tmp_path / "ft", progress=False, log=None)
    assert seen and all(r.description == fill_slots(pool.descriptions[r.task][r.description_index], r.record)
                        for r in seen)
    assert read_descriptions(path, ("counterfact", "recent")) == {"counterfact": list(pool.seen("counterfact")),
                                                                  "recent": list(pool.seen("recent"))}
    with pytest.raises(ValueError, match="another architecture"):
        training.train_editor(model, tok, dataclasses.replace(ft, name="ft2", rank=4), tmp_path / "ft2",
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


def test_experiment_instructions_file_reaches_the_editors_and_is_validated(tmp_path):
    path = default_pool().write(tmp_path / "pool.json")
    cfg = ExperimentConfig(run_dir=str(tmp_path / "r"), method=MethodConfig(), instructions_file=str(path))
    assert cfg.method.instructions_file == str(path) and cfg.pool() == default_pool()
    assert all(c.instructions_file == str(path) for c in cfg.editor_configs().values())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"template": default_pool().template, "tasks": {
        "counterfact": {"name": "CF", "descriptions": ["Be [LABEL] about it", "x"]}}}))
    with pytest.raises(ValueError, match=r"bad.json: counterfact description 0.*\[LABEL\]"):
        ExperimentConfig(run_dir=str(tmp_path / "r"), instructions_file=str(bad))
    with pytest.raises(FileNotFoundError, match="No instruction pool file"):
        MethodConfig(instructions_file=str(tmp_path / "missing.json"))


def test_local_generator_needs_a_chat_template(tiny_llama):
    model, tok = tiny_llama
    if getattr(tok, "chat_template", None):
        pytest.skip("this tiny tokenizer has a chat template")
    with pytest.raises(ValueError, match="no chat template"):
        LocalGenerator(model, tok, label="tiny")


# --------------------------------------------------------------------------------------------------------------------
# The endpoint generator against a stub server on 127.0.0.1
# --------------------------------------------------------------------------------------------------------------------


class Stub:
    """A local HTTP server answering POST /v1/chat/completions from a list of (status, body, delay, headers)."""

    def __init__(self, answers):
        self.answers, self.requests = list(answers), []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                status, reply, delay, headers = stub.answers.pop(0) if len(stub.answers) > 1 else stub.answers[0]
                time.sleep(delay)
                data = reply(body) if callable(reply) else reply
                data = data if isinstance(data, bytes) else json.dumps(data).encode()
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def completion(body, k=None):
    return {"choices": [{"index": i, "message": {"role": "assistant", "content": f"reply {i} seed {body['seed']}"}}
                        for i in range(body["n"] if k is None else k)]}


MESSAGES = [{"role": "user", "content": "hi"}]


def _gen(url, **kw):
    slept = []
    gen = EndpointGenerator(url, "stub-model", "sk-test", **{"timeout": 2.0, "retries": 2, "backoff": 0.5,
                                                             "sleep": slept.append, **kw})
    return gen, slept


def test_endpoint_success_sends_the_chat_request():
    with Stub([(200, completion, 0, {})]) as stub:
        gen, slept = _gen(stub.url)
        assert gen.generate(MESSAGES, 3, seed=7) == ["reply 0 seed 7", "reply 1 seed 7", "reply 2 seed 7"]
    req = stub.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test" and not slept
    assert req["body"]["model"] == "stub-model" and req["body"]["messages"] == MESSAGES and req["body"]["n"] == 3


def test_endpoint_that_ignores_n_is_asked_again():
    with Stub([(200, lambda b: completion(b, k=1), 0, {})]) as stub:
        gen, _ = _gen(stub.url)
        assert gen.generate(MESSAGES, 2, seed=1) == ["reply 0 seed 1", "reply 0 seed 2"]
    assert [r["body"]["n"] for r in stub.requests] == [2, 1]


def test_endpoint_malformed_json_is_a_clear_error():
    with Stub([(200, b"{not json", 0, {})]) as stub:
        gen, _ = _gen(stub.url)
        with pytest.raises(EndpointError, match=r"chat/completions: the reply is not JSON: b'\{not json'"):
            gen.generate(MESSAGES, 1, seed=0)
    with Stub([(200, {"id": "x"}, 0, {})]) as stub:
        with pytest.raises(EndpointError, match="not a chat completion"):
            _gen(stub.url)[0].generate(MESSAGES, 1, seed=0)


def test_endpoint_timeout_retries_with_backoff_then_fails():
    with Stub([(200, completion, 1.0, {})]) as stub:
        gen, slept = _gen(stub.url, timeout=0.2)
        with pytest.raises(EndpointError, match=r"no reply after 3 tries \(last: .*timed out"):
            gen.generate(MESSAGES, 1, seed=0)
    assert slept == [0.5, 1.0] and len(stub.requests) == 3


def test_endpoint_429_then_success_waits_retry_after():
    with Stub([(429, {"error": "slow down"}, 0, {"Retry-After": "3"}), (200, completion, 0, {})]) as stub:
        gen, slept = _gen(stub.url)
        assert gen.generate(MESSAGES, 1, seed=0) == ["reply 0 seed 0"]
    assert slept == [3.0] and len(stub.requests) == 2


def test_endpoint_client_errors_are_not_retried_and_unreachable_says_so():
    with Stub([(401, {"error": "bad key"}, 0, {})]) as stub:
        gen, slept = _gen(stub.url)
        with pytest.raises(EndpointError, match="HTTP 401 .*bad key"):
            gen.generate(MESSAGES, 1, seed=0)
    assert not slept and len(stub.requests) == 1
    gen, slept = _gen(stub.url)  # the server is gone: connection refused
    with pytest.raises(EndpointError, match="no reply after 3 tries.*INSTRUCTEDIT_LLM_BASE_URL"):
        gen.generate(MESSAGES, 1, seed=0)
    assert slept == [0.5, 1.0]


def test_endpoint_reads_url_model_and_key_from_the_environment():
    env = {"INSTRUCTEDIT_LLM_BASE_URL": "http://127.0.0.1:9/v1/", "INSTRUCTEDIT_LLM_MODEL": "m",
           "OPENAI_API_KEY": "k"}
    gen = EndpointGenerator.from_config(SearchConfig(generator="endpoint"), env)
    assert gen.url == "http://127.0.0.1:9/v1/chat/completions" and gen.model == "m" and gen.api_key == "k"
    with pytest.raises(EndpointError, match="needs a base URL and a model"):
        EndpointGenerator.from_config(SearchConfig(generator="endpoint"), {})


def test_unresolved_counts_chosen_intervals_overlapping_the_best_hand_written(tmp_path):
    pool = InstructionPool(default_pool().template, {"a": "A"}, {"a": ("x", "y", "held")})
    cands = [Candidate("a", 0, 0, "x", "hand-written", "scored", score=0.5, ci_low=0.4, ci_high=0.6),
             Candidate("a", 0, 1, "z", "hand-written", "scored", score=0.3, ci_low=0.2, ci_high=0.35),
             Candidate("a", 1, 0, "y", "g", "scored", score=0.9, ci_low=0.8, ci_high=1.0)]
    result = search_mod.SearchResult([], cands, pool, tmp_path / "p.json", "stop", ("a",))
    assert result.unresolved() == (1, 2)  # x overlaps itself; y's [0.8, 1.0] lies above x's [0.4, 0.6]


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
