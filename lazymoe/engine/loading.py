"""Load everything but the experts: attention, norms, routers, embeddings, lm_head, shared experts.

The model is built on PyTorch's "meta" device (shapes only, no memory), its expert modules are
swapped for placeholders, and only then is memory allocated on the chosen device and filled
from the checkpoint. So a 30B-parameter MoE whose non-expert part is 1.5 GB takes 1.5 GB here;
the experts stay in the checkpoint file until the engine asks the expert store for them.

A GGUF file (llama.cpp's format) works too: the config and tokenizer come from its metadata, the
non-expert tensors are dequantized to floats (they are small), and the experts stay quantized in
the file (lazymoe/engine/storage/gguf_file.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from lazymoe.engine.arch import is_expert_key, moe_blocks, spec_for
from lazymoe.engine.errors import CheckpointError
from lazymoe.models.archs import Arch


class ExpertsPlaceholder(torch.nn.Module):
    """Stands where the experts were until the engine installs its own module."""

    def __init__(self, act_fn) -> None:
        super().__init__()
        self.act_fn = act_fn  # the experts' activation (SiLU for every supported model)

    def forward(self, *args, **kwargs):
        raise RuntimeError("the engine has not installed its experts module yet")


def is_gguf(path: Path) -> bool:
    """A single .gguf file rather than a Hugging Face folder."""
    return Path(path).suffix.lower() == ".gguf" and Path(path).is_file()


def load_tokenizer(model_path: Path):
    """The tokenizer of a model folder, or of a GGUF file (from its tokenizer.ggml.* metadata)."""
    model_path = Path(model_path)
    if is_gguf(model_path):
        return AutoTokenizer.from_pretrained(model_path.parent, gguf_file=model_path.name)
    return AutoTokenizer.from_pretrained(model_path)


def load_config(model_dir: Path):
    """The transformers config of `model_dir` (or a GGUF file), with an error saying what is missing."""
    if is_gguf(model_dir):
        from lazymoe.engine.storage.gguf_config import config_from_gguf, open_reader

        fields = config_from_gguf(open_reader(Path(model_dir)), Path(model_dir))
        return AutoConfig.for_model(**fields)
    if not (model_dir / "config.json").exists():
        raise CheckpointError(
            f"{model_dir / 'config.json'} is missing: a model folder needs config.json and "
            "*.safetensors (Hugging Face layout). Download the model again or point to its folder."
        )
    try:
        return AutoConfig.from_pretrained(model_dir)
    except ValueError as exc:  # transformers: unknown model_type
        raise CheckpointError(f"{model_dir / 'config.json'} cannot be read: {exc}") from exc


def safetensors_files(model_dir: Path) -> list[Path]:
    """The checkpoint's weight files (sharded through the index, or one file)."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [model_dir / n for n in names]
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    missing = [f for f in files if not f.exists()]
    if not files or missing:
        raise CheckpointError(
            f"no weights in {model_dir}: "
            + (f"missing {', '.join(str(m) for m in missing)}" if missing else "no *.safetensors")
            + ". Download the checkpoint again (or rebuild the bundled model with "
            "`python -m lazymoe.models.prepare`)."
        )
    return files


def iter_resident_tensors(model_dir: Path, spec: Arch) -> Iterator[tuple[str, torch.Tensor]]:
    """(module parameter name, CPU tensor) for every non-expert tensor of the checkpoint."""
    for path in safetensors_files(model_dir):
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                    if not is_expert_key(key):
                        yield spec.module_key(key), handle.get_tensor(key)
        except (OSError, RuntimeError, ValueError, SafetensorError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(
                f"{path} is corrupt or truncated ({exc}). Download it again (or rebuild the "
                "bundled model with `python -m lazymoe.models.prepare`)."
            ) from exc


def load_resident(model_dir: Path, device: str, dtype: torch.dtype):
    """(model, architecture record, [(layer, moe block)]) with every non-expert weight on `device`.

    Each `block.experts` is an `ExpertsPlaceholder` until the engine installs its own.
    """
    config = load_config(model_dir)
    spec = spec_for(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    blocks = moe_blocks(model)
    for _, block in blocks:
        block.experts = ExpertsPlaceholder(block.experts.act_fn)
    model.to_empty(device=device)

    expected = dict(model.named_parameters())
    expected.update(dict(model.named_buffers()))
    loaded: set[str] = set()
    if is_gguf(model_dir):
        from lazymoe.engine.storage.gguf_config import iter_gguf_resident

        tensors = iter_gguf_resident(Path(model_dir), spec, config.to_dict())
    else:
        tensors = iter_resident_tensors(model_dir, spec)
    with torch.no_grad():
        for name, tensor in tensors:
            target = expected.get(name)
            if target is None:
                continue  # e.g. an unused buffer saved by an older transformers
            if tuple(target.shape) != tuple(tensor.shape):
                raise CheckpointError(
                    f"{model_dir}: tensor {name} has shape {tuple(tensor.shape)} but config.json "
                    f"says {tuple(target.shape)}: the weights and the config do not belong together"
                )
            target.copy_(tensor)
            loaded.add(name)
    _rebuild_rotary(model, device)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
        loaded.add("lm_head.weight")
    missing = [n for n, _ in model.named_parameters() if n not in loaded]
    if missing:
        raise CheckpointError(
            f"{model_dir}: the checkpoint lacks {len(missing)} tensors the model needs, e.g. "
            f"{missing[:3]}: it is incomplete or does not match config.json; download it again"
        )
    model.eval()
    return model, spec, blocks


def _rebuild_rotary(model, device: str) -> None:
    """Rotary tables are computed buffers, not weights: compute them again on `device`."""
    for name, module in list(model.named_modules()):
        if hasattr(module, "inv_freq") and hasattr(module, "config"):
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, type(module)(module.config).to(device))
