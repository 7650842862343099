import json
import random

import pytest

from instructedit_utils.data.instructions import (InstructionPool, choose_description, default_pool, fill_slots,
                                                  format_instruction, make_edit_request)


def test_template_is_exact():
    assert format_instruction("CounterFact", "Do it.", "X is") == "Task: CounterFact\nDescription: Do it.\nInput: X is"


def test_pool_has_nine_seen_and_five_held_out_descriptions_per_task():
    pool = default_pool()
    for task in ("counterfact", "recent", "convsent", "zsre"):
        assert len(pool.descriptions[task]) == 14 and len(set(pool.descriptions[task])) == 14
        assert len(pool.seen(task)) == 9 and len(pool.held_out(task)) == 5
        assert not set(pool.held_out(task)) & set(pool.seen(task))
        assert pool.descriptions[task] == pool.seen(task) + pool.held_out(task)
    for d in pool.descriptions["convsent"]:
        assert "[LABEL]" in d and "[TOPIC]" in d


def test_random_choice_never_picks_held_out_and_held_out_draws_only_held_out():
    pool = default_pool()
    rng = random.Random(0)
    picks = {choose_description("recent", pool, None, rng)[1] for _ in range(500)}
    assert picks == set(range(9))
    held = {choose_description("recent", pool, "held_out", rng)[1] for _ in range(500)}
    assert held == set(range(9, 14))
    assert choose_description("recent", pool, "held_out") == (pool.held_out("recent")[0], 9)


def test_pool_files_round_trip_and_old_files_hold_out_their_last_description(tmp_path):
    pool = default_pool()
    path = pool.write(tmp_path / "pool.json")
    again = InstructionPool.from_file(path)
    assert again == InstructionPool(pool.template, pool.names, pool.descriptions,
                                    {t: 5 for t in pool.descriptions})
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"template": pool.template, "tasks": {"zsre": {"name": "ZsRE",
                                                                             "descriptions": ["a", "b", "c"]}}}))
    legacy = InstructionPool.from_file(old)
    assert legacy.seen("zsre") == ("a", "b") and legacy.held_out("zsre") == ("c",)
    with pytest.raises(ValueError, match="at least one seen and one held-out"):
        InstructionPool(pool.template, {"a": "A"}, {"a": ("x",)})
    assert pool.replace_seen("zsre", ["new"]).descriptions["zsre"] == ("new", *pool.held_out("zsre"))


def test_instructions_wrap_edit_rephrase_portability_not_locality(cf_records):
    rec = cf_records[0]
    req = make_edit_request(rec, description=2)
    prefix = "Task: CounterFact\nDescription: " + default_pool().descriptions["counterfact"][2] + "\nInput: "
    assert req.prompt == prefix + rec.prompt
    assert req.portability[0].prompt == prefix + rec.portability[0].prompt
    assert req.locality == rec.locality
    assert req.target == "Syria" and req.description_index == 2
    with_loc = make_edit_request(rec, description=2, instruct_locality=True)
    assert with_loc.locality[0].prompt == prefix + rec.locality[0].prompt
    assert with_loc.locality[0].answers == rec.locality[0].answers


def test_instructions_off_is_the_raw_record(cf_records):
    req = make_edit_request(cf_records[0], instructions=False)
    assert req.prompt == cf_records[0].prompt and req.description is None


def test_convsent_slots_are_filled(convsent_records):
    req = make_edit_request(convsent_records[1], description="held_out")
    assert "[LABEL]" not in req.prompt and "[TOPIC]" not in req.prompt
    assert "negative" in req.description and "tea" in req.description
    assert req.prompt.endswith("Input: What do you think of tea?")
    assert all(r.startswith("Task: ConvSent\n") for r in req.rephrases)


def test_unfillable_slot_is_an_error(cf_records):
    with pytest.raises(ValueError, match="needs \\[LABEL\\]"):
        fill_slots("Be [LABEL].", cf_records[0])


def test_external_description_text(cf_records):
    req = make_edit_request(cf_records[0], description="My own wording.")
    assert "Description: My own wording.\n" in req.prompt and req.description_index is None


def test_pool_file_validation(tmp_path):
    path = tmp_path / "pool.json"
    path.write_text(json.dumps({"template": "{task}|{description}|{input}",
                                "tasks": {"zsre": {"name": "ZsRE", "descriptions": ["only one"]}}}))
    with pytest.raises(ValueError, match="at least one seen and one held-out"):
        InstructionPool.from_file(path)
    path.write_text(json.dumps({"template": "{task}|{input}", "tasks": {}}))
    with pytest.raises(ValueError, match="lacks {description}"):
        InstructionPool.from_file(path)
