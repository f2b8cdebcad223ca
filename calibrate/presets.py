"""Model architectures to profile, built with random weights from a config object.

Timing does not depend on weight values, so no download is needed: a preset names a real
architecture's shape. A local model folder works too (its weights are loaded when present,
otherwise its config.json is built with random weights). Needs only torch and transformers.
"""
from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any

from simsched.errors import ConfigError

# name -> (transformers config class, its arguments). Shapes from the models' published configs.
PRESETS = MappingProxyType({
    "qwen2_5_1_5b": ("Qwen2Config", MappingProxyType(dict(
        num_hidden_layers=28, hidden_size=1536, num_attention_heads=12, num_key_value_heads=2,
        intermediate_size=8960, vocab_size=151936, max_position_embeddings=32768,
        rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True))),
    "llama3_8b": ("LlamaConfig", MappingProxyType(dict(
        num_hidden_layers=32, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
        intermediate_size=14336, vocab_size=128256, max_position_embeddings=8192,
        rope_theta=500_000.0, rms_norm_eps=1e-5, tie_word_embeddings=False))),
    # Llama-3.1-8B's shape (as llama3_8b, with its 128k positions; its rope scaling is left out:
    # it changes no step's work).
    "llama3_1_8b": ("LlamaConfig", MappingProxyType(dict(
        num_hidden_layers=32, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
        intermediate_size=14336, vocab_size=128256, max_position_embeddings=131072,
        rope_theta=500_000.0, rms_norm_eps=1e-5, tie_word_embeddings=False))),
    # A few-layer model for CPU tests: same code path, milliseconds per step.
    "tiny": ("Qwen2Config", MappingProxyType(dict(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, vocab_size=1024, max_position_embeddings=4096))),
})

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt")


def check_model(model: str) -> None:
    """Raise ConfigError unless ``model`` is a preset name or a folder with a config.json."""
    if model in PRESETS:
        return
    path = Path(model)
    if path.is_dir() and (path / "config.json").is_file():
        return
    why = "no config.json in that folder" if path.is_dir() else "neither a preset nor a model folder"
    raise ConfigError("model", why, model, ", ".join(PRESETS) + ", or a local model folder")


def model_config(model: str) -> Any:
    """The transformers config object of a preset or a local folder."""
    import transformers

    check_model(model)
    if model in PRESETS:
        cls_name, kwargs = PRESETS[model]
        return getattr(transformers, cls_name)(**dict(kwargs))
    return transformers.AutoConfig.from_pretrained(model, local_files_only=True)


def has_weights(model: str) -> bool:
    path = Path(model)
    return model not in PRESETS and any(any(path.glob(p)) for p in WEIGHT_PATTERNS)


def build_model(model: str, device: Any, dtype: Any, attn_implementation: str = "sdpa") -> Any:
    """A causal LM in eval mode on ``device``: random weights for a preset or a config-only
    folder (initialised directly on the device), the folder's weights when it has them."""
    import torch
    from transformers import AutoModelForCausalLM

    config = model_config(model)
    if has_weights(model):
        net = AutoModelForCausalLM.from_pretrained(model, dtype=dtype, local_files_only=True,
                                                   attn_implementation=attn_implementation)
        net = net.to(device)
    else:
        with torch.device(device):
            net = AutoModelForCausalLM.from_config(config, dtype=dtype,
                                                   attn_implementation=attn_implementation)
    return net.eval()
