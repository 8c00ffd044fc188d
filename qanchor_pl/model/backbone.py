"""Backbone loading: the tiny offline Qwen2 or any causal LM, plus optional peft LoRA.

Nothing here assumes the tiny model: everything downstream talks to the decoder (hidden states)
and the LM head through :func:`decoder_of` and :func:`lm_head_of`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from qanchor_pl.model.config import LoraSpec, TinyBackbone


def load_tokenizer(spec: str) -> Any:
    """The tokenizer the data was tokenised with (a data set's own trained BPE, or a backbone's)."""
    from data_modules.dataset.tokenizer import load_tokenizer as load

    return load(spec)


def build_tiny(shape: TinyBackbone, vocab_size: int, pad_id: int | None, eos_id: int | None) -> nn.Module:
    """A small randomly initialised Qwen2ForCausalLM; its weights depend only on ``shape.seed``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=shape.max_positions,
        tie_word_embeddings=True,
        initializer_range=shape.init_std if shape.init_std is not None else shape.hidden_size**-0.5,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        use_cache=False,
    )
    # A private RNG stream: the global one (data order, dropout) is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(shape.seed)
        model = Qwen2ForCausalLM(cfg)
    return model


# Published shapes of the Qwen2.5 Instruct backbones of the paper's scaling study (config.json).
QWEN25_SHAPES: dict[str, dict] = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                       num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    # not published: a few-MB random model for CPU tests and smoke runs (vocabulary = the tokenizer's)
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=None, tie_word_embeddings=True),
}  # fmt: skip


def write_shaped_backbone(shape: str, tokenizer: str, out: str | Path, seed: int = 0) -> dict:
    """A randomly initialised causal LM with a published shape, saved like a downloaded model
    (with ``tokenizer``'s files), for speed and memory measurements where no weights can be fetched."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if shape not in QWEN25_SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {sorted(QWEN25_SHAPES)}")
    tok = load_tokenizer(tokenizer)
    dims = {**QWEN25_SHAPES[shape]}
    dims["vocab_size"] = dims["vocab_size"] or len(tok)
    cfg = Qwen2Config(**dims, max_position_embeddings=32768, rope_theta=1_000_000.0,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, use_cache=False)  # fmt: skip
    if len(tok) > cfg.vocab_size:
        raise ValueError(
            f"tokenizer has {len(tok)} tokens, more than the {shape} vocabulary ({cfg.vocab_size})"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(cfg)
    out = Path(out)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"out": str(out), "shape": shape, "params": sum(p.numel() for p in model.parameters())}


def load_pretrained(name_or_path: str, dtype: str) -> nn.Module:
    """A causal LM from a local folder or hub id (offline machines need a local folder)."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=getattr(torch, dtype))
    except OSError as err:
        hint = "" if Path(name_or_path).exists() else " (no such local folder; hub ids need network access)"
        raise OSError(f"cannot load backbone '{name_or_path}'{hint}: {err}") from None


def apply_lora(model: nn.Module, spec: LoraSpec) -> nn.Module:
    """Wrap ``model`` with peft LoRA; the base weights are frozen, the adapters trainable."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)


def base_causal_lm(backbone: nn.Module) -> nn.Module:
    """The transformers CausalLM inside a possible peft wrapper (LoRA layers are injected in place)."""
    get_base = getattr(backbone, "get_base_model", None)
    return get_base() if callable(get_base) else backbone


def decoder_of(backbone: nn.Module) -> nn.Module:
    """The transformer stack that returns hidden states (no LM head)."""
    return base_causal_lm(backbone).get_decoder()


def lm_head_of(backbone: nn.Module) -> nn.Module:
    return base_causal_lm(backbone).get_output_embeddings()


def token_embeddings_of(backbone: nn.Module) -> nn.Module:
    return base_causal_lm(backbone).get_input_embeddings()
