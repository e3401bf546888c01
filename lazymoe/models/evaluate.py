"""What makes the bundled model "real": held-out perplexity, non-uniform routing, Python-looking output.

Used by the model card (card.py), the tests and modules 02/05. Works on any Qwen3-MoE-style
transformers model whose forward accepts `output_router_logits=True`.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass

import torch


@torch.no_grad()
def heldout_perplexity(model, ids: torch.Tensor, seq_len: int = 256, max_tokens: int | None = None,
                       batch_windows: int = 8) -> float:
    """exp(mean next-token loss) over non-overlapping windows of `ids`.

    perplexity = exp(-(1/N) * sum_i log p(x_i | x_<i)); a model that knows nothing (uniform over
    the vocabulary) scores exactly vocab_size.
    """
    n = ids.numel() if max_tokens is None else min(ids.numel(), max_tokens)
    n_windows = (n - 1) // seq_len
    if n_windows < 1:
        raise ValueError(f"need more than seq_len={seq_len} tokens, got {n}")
    windows = ids[: n_windows * seq_len + 1]
    total_nats, total_tokens = 0.0, 0
    for first in range(0, n_windows, batch_windows):
        idx = torch.arange(first, min(first + batch_windows, n_windows))
        starts = idx * seq_len
        x = torch.stack([windows[s : s + seq_len + 1] for s in starts.tolist()])  # (b, T + 1)
        logits = model(input_ids=x[:, :-1]).logits.float()  # (b, T, V)
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
        )
        total_nats += float(nll)
        total_tokens += x[:, 1:].numel()
    return math.exp(total_nats / total_tokens)


@dataclass
class RoutingStats:
    """Which experts the router picked, on some text.

    counts[l, e]      how many times expert e of layer l was among a token's top-k  (L, E)
    chosen[l, t]      the top-k experts of token position t at layer l, best first  (L, T, k)
    token_ids[t]      the token at position t                                       (T,)
    router_entropy_bits[l]  mean over tokens of the entropy of the softmax router   (L,)
    """

    counts: torch.Tensor
    chosen: torch.Tensor
    token_ids: torch.Tensor
    router_entropy_bits: torch.Tensor
    top_k: int

    @property
    def top1(self) -> torch.Tensor:
        """The top-1 expert of each token at each layer. (L, T)"""
        return self.chosen[..., 0]

    @property
    def num_layers(self) -> int:
        return self.counts.shape[0]

    @property
    def num_experts(self) -> int:
        return self.counts.shape[1]

    @property
    def load(self) -> torch.Tensor:
        """Fraction of the routing decisions each expert got, per layer; rows sum to 1. (L, E)"""
        return self.counts / self.counts.sum(dim=1, keepdim=True)

    @property
    def load_entropy_bits(self) -> torch.Tensor:
        """Entropy of each layer's load in bits; uniform load gives log2(num_experts). (L,)"""
        p = self.load.clamp_min(1e-12)
        return -(p * p.log2()).sum(dim=1)

    @property
    def uniform_entropy_bits(self) -> float:
        return math.log2(self.num_experts)

    def expert_tokens(self, layer: int, expert: int, k: int = 8) -> list[tuple[int, int, float]]:
        """The `k` most frequent tokens whose top-1 expert is `expert` at `layer`.

        Returns (token_id, count, share) with share = count / occurrences of that token in the text:
        a share near 1 means this expert takes (almost) every occurrence of the token.
        """
        mask = self.top1[layer] == expert
        chosen = torch.bincount(self.token_ids[mask], minlength=int(self.token_ids.max()) + 1)
        overall = torch.bincount(self.token_ids, minlength=chosen.numel())
        top = torch.argsort(chosen, descending=True, stable=True)[:k]
        return [(int(t), int(chosen[t]), float(chosen[t] / overall[t])) for t in top if chosen[t] > 0]


@torch.no_grad()
def routing_stats(model, ids: torch.Tensor, seq_len: int = 256, max_tokens: int = 32768) -> RoutingStats:
    """Run `ids` (cut into windows of seq_len) through the model and collect its routing."""
    cfg = model.config
    n_windows = max(1, min(ids.numel(), max_tokens) // seq_len)
    x = ids[: n_windows * seq_len].reshape(n_windows, -1)  # (W, T)
    counts = torch.zeros(cfg.num_hidden_layers, cfg.num_experts)
    chosen_all, entropy = [], torch.zeros(cfg.num_hidden_layers)
    for w in range(n_windows):
        out = model(input_ids=x[w : w + 1], output_router_logits=True)
        per_layer = []
        for layer, logits in enumerate(out.router_logits):  # each (T, E)
            probs = logits.float().softmax(dim=-1)
            chosen = probs.topk(cfg.num_experts_per_tok, dim=-1).indices  # (T, k)
            counts[layer] += torch.bincount(chosen.reshape(-1), minlength=cfg.num_experts)
            entropy[layer] += float(-(probs * probs.clamp_min(1e-12).log2()).sum(-1).sum())
            per_layer.append(chosen)
        chosen_all.append(torch.stack(per_layer))  # (L, T, k)
    return RoutingStats(
        counts=counts,
        chosen=torch.cat(chosen_all, dim=1),
        token_ids=x.reshape(-1),
        router_entropy_bits=entropy / x.numel(),
        top_k=cfg.num_experts_per_tok,
    )


def reuse_within(chosen: torch.Tensor, num_experts: int, window: int) -> torch.Tensor:
    """Per layer, the fraction of routing picks whose expert was also picked by one of the
    previous `window` tokens: the hit rate of a cache holding the last `window` tokens' experts.

    chosen: (L, T, k) expert ids. Returns (L,). Uniform random routing would give about
    1 - (1 - k/E)^window.
    """
    n_layers, n_tokens, _ = chosen.shape
    used = torch.zeros(n_layers, n_tokens, num_experts, dtype=torch.bool)
    used.scatter_(2, chosen, True)  # (L, T, E): expert e used by token t
    recent = torch.zeros_like(used)
    for w in range(1, window + 1):  # recent[t] = used by any of tokens t-window .. t-1
        recent[:, w:] |= used[:, :-w]
    hits = recent.gather(2, chosen)[:, window:]  # skip the first tokens (no full history yet)
    return hits.float().mean(dim=(1, 2))


@torch.no_grad()
def greedy(model, tokenizer, prompt: str, max_new_tokens: int = 48) -> str:
    """The greedy continuation of `prompt` (text only, without the prompt)."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def complete_lines_parse(code: str) -> bool:
    """True if the text up to its last complete line is valid Python once blocks are closed.

    Generated code stops mid-block; we drop the unfinished last line and append `pass` bodies
    where a block header was left open, so only real syntax errors count.
    """
    lines = code.split("\n")[:-1] if "\n" in code else [code]
    while lines:
        text = "\n".join(lines)
        for suffix in ("", "\n" + " " * _indent_after(lines) + "pass"):
            try:
                ast.parse(text + suffix)
                return True
            except SyntaxError:
                pass
        lines = lines[:-1]
    return False


def _indent_after(lines: list[str]) -> int:
    last = next((line for line in reversed(lines) if line.strip()), "")
    return len(last) - len(last.lstrip()) + (4 if last.rstrip().endswith(":") else 0)
