"""Baselines from the transformers library: the full model, and accelerate's CPU/disk offload.

- ``full``: the whole model on one device (the GPU when there is one): what lazymoe at an unlimited
  budget should match.
- ``offload``: `device_map="auto"` with a GPU memory cap; accelerate puts what does not fit on the
  CPU (or on disk past a RAM cap) and copies each offloaded layer in for every token. This is the
  naive path in the blog analysis of Qwen3-Coder-Next 80B on an 8 GB laptop GPU (255 s/token).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

GiB = 1024**3


@dataclass
class HFRunSpec:
    model_path: str
    mode: str = "full"  # full | offload
    device: str = "auto"  # full: where the model goes
    dtype: str = "bfloat16"
    vram_budget_bytes: int | None = None  # offload: GPU cap (None on a CPU-only machine)
    ram_budget_bytes: int | None = None  # offload: CPU cap; past it, layers go to disk

    def __post_init__(self) -> None:
        if self.mode not in ("full", "offload"):
            raise ValueError(f"mode={self.mode!r}: use 'full' or 'offload'")


class HFRunner:
    temperature: float = 0.0  # 0: greedy
    seed: int = 0

    def __init__(self, spec: HFRunSpec) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.spec = spec
        dtype = getattr(torch, spec.dtype)
        cuda = torch.cuda.is_available()
        if spec.mode == "full":
            device = ("cuda" if cuda else "cpu") if spec.device == "auto" else spec.device
            self.model = AutoModelForCausalLM.from_pretrained(spec.model_path, dtype=dtype).to(device)
            self.input_device = torch.device(device)
        else:
            self._offload_dir = tempfile.TemporaryDirectory(prefix="lazymoe-offload-")
            max_memory: dict = {}
            if cuda:
                max_memory[0] = spec.vram_budget_bytes or 4 * GiB
            max_memory["cpu"] = spec.ram_budget_bytes or 64 * GiB
            self.model = AutoModelForCausalLM.from_pretrained(
                spec.model_path, dtype=dtype, device_map="auto", max_memory=max_memory,
                offload_folder=self._offload_dir.name)
            self.input_device = torch.device("cuda:0" if cuda else "cpu")
        self.model.eval()
        self.device_map = getattr(self.model, "hf_device_map", None)

    def stream(self, prompt_ids: list[int], max_new_tokens: int) -> Iterator[int]:
        import torch

        gen = torch.Generator().manual_seed(self.seed)
        with torch.inference_mode():
            ids = torch.tensor([list(prompt_ids)], device=self.input_device)
            out = self.model(input_ids=ids, use_cache=True)
            for i in range(max_new_tokens):
                logits = out.logits[0, -1].float()
                if self.temperature > 0:
                    probs = torch.softmax(logits.cpu() / self.temperature, dim=-1)
                    token = int(torch.multinomial(probs, 1, generator=gen))
                else:
                    token = int(logits.argmax())  # greedy; int() waits for the device
                yield token
                if i + 1 < max_new_tokens:
                    step = torch.tensor([[token]], device=self.input_device)
                    out = self.model(input_ids=step, cache=out.cache, use_cache=True)

    def stats(self) -> dict:
        if not self.device_map:
            return {}
        placed: dict[str, int] = {}
        for where in self.device_map.values():
            placed[str(where)] = placed.get(str(where), 0) + 1
        return {"device_map_modules": placed}

    def close(self) -> None:
        self.model = None
