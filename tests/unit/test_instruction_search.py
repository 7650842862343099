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
    # a locality prompt is test text too
    assert check("Say the name of the father of Leonardo") == "copies test record counterfact/hand/0 ('the name of the')"
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
        with pytest.raises(ValueError, match=r"SearchConfig\.(generator|search_tasks|pool_size|max_similarity|"
                                             r"score_weights|stop_on|max_words)"):
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


# --------------------------------------------------------------------------------------------------------------------
# The real trial editor, the chosen pool in the trainer, fine-tuning, and the comparison
# --------------------------------------------------------------------------------------------------------------------


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
