"""Tiny random Hugging Face checkpoints of every MoE architecture the engine supports.

Tests use them to check the engine against transformers without downloading anything; the
benchmark uses the same function with real shapes (`hidden_size=2048, num_experts=128, ...`)
to get a checkpoint as large as a real model, with random weights.

    make_random_checkpoint(tmp / "m", arch="olmoe", num_hidden_layers=3)

Random weights route almost uniformly: the worst case for an expert cache. Say so when you
report numbers measured on them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from lazymoe import paths
from lazymoe.models.archs import ARCHS, UnknownArchitectureError, get_arch

EOS_TOKEN = "<|endoftext|>"

# The tiny default config of each architecture is its registry record's `tiny_config`.
SUPPORTED_ARCHS = tuple(ARCHS)


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A merge-free byte-level BPE: 256 byte tokens + one end-of-text token (id 256)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab[EOS_TOKEN] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS_TOKEN])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN
    )


def _tokenizer_for(model_dir: Path | None) -> PreTrainedTokenizerFast:
    """The bundled model's tokenizer when it is there, else the tiny byte-level one."""
    bundled = paths.bundled_model_dir() if model_dir is None else model_dir
    if (bundled / "tokenizer.json").exists():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(bundled)
    return byte_level_tokenizer()


def make_random_checkpoint(
    out_dir: str | Path,
    arch: str = "qwen3_moe",
    seed: int = 0,
    dtype: str = "float32",
    tokenizer_from: str | Path | None = None,
    **config_overrides: Any,
) -> Path:
    """Write a random-weight checkpoint of `arch` to `out_dir` (config, safetensors, tokenizer).

    `config_overrides` replace the tiny defaults (any field of the transformers config). The
    vocabulary is the tokenizer's unless `vocab_size` is given. Returns `out_dir`.
    """
    try:
        record = get_arch(arch)
    except UnknownArchitectureError as err:
        raise UnknownArchitectureError(f"{err}: pass one of them as arch=") from err
    out = Path(out_dir)
    tokenizer = _tokenizer_for(Path(tokenizer_from) if tokenizer_from else None)
    fields = {**record.tiny_config, **config_overrides}
    fields.setdefault("vocab_size", len(tokenizer))
    eos_id = tokenizer.eos_token_id
    config = AutoConfig.for_model(
        arch, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id, **fields
    )
    torch.manual_seed(seed)
    with torch.device("cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    _spread_router_weights(model, seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _spread_router_weights(model: torch.nn.Module, seed: int) -> None:
    """Give routers and experts larger random weights than transformers' tiny init.

    With the default init (std 0.02) every router logit is ~0, so top-k picks are decided by
    rounding noise and two correct implementations could disagree. Larger weights make the
    routing decisive, so token-identical tests test the engine, not floating-point luck.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("mlp.gate.weight") or ".experts." in name:
                fan_in = param.shape[-1]
                param.copy_(torch.randn(param.shape, generator=gen) / fan_in**0.5)


def copy_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Copy a checkpoint folder (for tests that corrupt one file)."""
    shutil.copytree(src, dst)
    return Path(dst)


def read_config(model_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(model_dir) / "config.json").read_text())
