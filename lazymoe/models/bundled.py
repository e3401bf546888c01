"""Loading the bundled tiny MoE (or any Qwen3-MoE checkpoint folder) for notebooks and tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen3MoeForCausalLM

from lazymoe.i18n import _
from lazymoe.models import corpus
from lazymoe.paths import bundled_model_dir

REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                  "train_log.json")


def load_model(model_dir: str | Path | None = None) -> Qwen3MoeForCausalLM:
    """The model in float32, eval mode, experts computed by the plain per-expert loop.

    transformers picks `grouped_mm` for experts by default; on a CPU with experts this small the
    plain loop is ~3x faster and easier to read, so we switch to it.
    """
    path = Path(model_dir) if model_dir is not None else bundled_model_dir()
    missing = [f for f in ("config.json", "model.safetensors") if not (path / f).exists()]
    if missing:
        raise FileNotFoundError(_("{path} lacks {files}: run `make data` (python -m lazymoe.models.prepare) "
                                  "to build the bundled model").format(path=path, files=", ".join(missing)))
    model = Qwen3MoeForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.set_experts_implementation("eager")
    return model.eval()


def load_tokenizer(model_dir: str | Path | None = None) -> PreTrainedTokenizerFast:
    path = Path(model_dir) if model_dir is not None else bundled_model_dir()
    return AutoTokenizer.from_pretrained(path)


def heldout_ids(tokenizer, max_tokens: int | None = None) -> torch.Tensor:
    """Token ids of the held-out stdlib files (never trained on), files joined by end-of-text."""
    from lazymoe.models.recipe import encode_files

    _, heldout = corpus.split(corpus.source_files())
    ids = encode_files(tokenizer, heldout)
    return ids if max_tokens is None else ids[:max_tokens]


def problems(model_dir: str | Path | None = None) -> list[str]:
    """What is wrong with a model folder (empty list: it looks complete and loadable)."""
    path = Path(model_dir) if model_dir is not None else bundled_model_dir()
    if not path.is_dir():
        return [_("{path} does not exist").format(path=path)]
    found = [_("missing {file}").format(file=f) for f in REQUIRED_FILES if not (path / f).exists()]
    if found:
        return found
    try:
        cfg = json.loads((path / "config.json").read_text())
        tj = json.loads((path / "tokenizer.json").read_text())
        ids = set(tj["model"]["vocab"].values()) | {t["id"] for t in tj.get("added_tokens", [])}
    except (OSError, ValueError, KeyError) as err:
        return [_("unreadable config or tokenizer: {error}").format(error=err)]
    if cfg.get("model_type") != "qwen3_moe":
        found.append(_("config.json model_type is {value!r}, expected 'qwen3_moe'").format(value=cfg.get("model_type")))
    if len(ids) != cfg.get("vocab_size"):
        found.append(_("tokenizer has {n} tokens but config says {vocab_size}").format(
            n=len(ids), vocab_size=cfg.get("vocab_size")))
    return found
