"""The recipe of the bundled tiny MoE: tokenizer, model shape, seeded training on the CPU.

    python -m lazymoe.models.prepare --force      # runs `build(RecipeConfig(), out_dir)`

Everything is seeded: the corpus order is fixed (corpus.py), batches are drawn from a
`torch.Generator` seeded with `seed`, and the model is initialized after `torch.manual_seed(seed)`.
The per-step loss goes to train_log.json beside the weights, so a test can replay the first steps
and compare.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from lazymoe.models import corpus
from lazymoe.models.tokenizer import EOS_TOKEN, as_transformers, train_tokenizer


@dataclass(frozen=True)
class RecipeConfig:
    """Shape and training schedule of the bundled model (defaults: the shipped one)."""

    seed: int = 0
    vocab_size: int = 4096
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    num_experts: int = 16
    top_k: int = 2
    moe_intermediate_size: int = 128
    max_position_embeddings: int = 1024
    seq_len: int = 256  # tokens per training sequence
    batch_size: int = 8  # sequences per step
    steps: int = 1000
    lr: float = 3e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.05
    aux_loss_coef: float = 0.01  # per-layer Switch load balancing (Switch Transformer used 0.01):
    # without it a short CPU run lets a few experts take most tokens while others die
    eval_every: int = 200  # steps between held-out loss estimates in the log
    eval_batches: int = 4

    def __post_init__(self) -> None:
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k={self.top_k} > num_experts={self.num_experts}: lower top_k")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.seq_len > self.max_position_embeddings:
            raise ValueError("seq_len must not exceed max_position_embeddings")
        if self.steps < 1 or self.warmup_steps >= self.steps:
            raise ValueError(f"need steps ({self.steps}) > warmup_steps ({self.warmup_steps})")

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.batch_size


def model_config(cfg: RecipeConfig, eos_id: int) -> Qwen3MoeConfig:
    """The transformers config: every layer is MoE; norm_topk_prob=True as llama.cpp assumes."""
    return Qwen3MoeConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=4 * cfg.hidden_size,  # unused: no dense MLP layers
        moe_intermediate_size=cfg.moe_intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        num_experts=cfg.num_experts,
        num_experts_per_tok=cfg.top_k,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        max_position_embeddings=cfg.max_position_embeddings,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        router_aux_loss_coef=cfg.aux_loss_coef,  # recorded only: train_steps computes its own
        output_router_logits=False,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        initializer_range=0.02,
    )


def encode_files(tokenizer, files: list[corpus.SourceFile]) -> torch.Tensor:
    """All files' token ids in corpus order, each followed by the end-of-text id. (N,) int64."""
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    encodings = tokenizer.backend_tokenizer.encode_batch([f.text for f in files])
    ids: list[int] = []
    for enc in encodings:
        ids.extend(enc.ids)
        ids.append(eos_id)
    return torch.tensor(ids, dtype=torch.long)


def lr_at(step: int, cfg: RecipeConfig) -> float:
    """Linear warmup, then cosine from lr to lr * min_lr_ratio."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def batch_at(ids: torch.Tensor, gen: torch.Generator, cfg: RecipeConfig) -> torch.Tensor:
    """(batch_size, seq_len + 1) windows at random offsets drawn from `gen`."""
    starts = torch.randint(0, ids.numel() - cfg.seq_len - 1, (cfg.batch_size,), generator=gen)
    return torch.stack([ids[s : s + cfg.seq_len + 1] for s in starts.tolist()])


def load_balancing_loss(router_logits: tuple[torch.Tensor, ...], top_k: int) -> torch.Tensor:
    """Switch-Transformer balancing loss, computed per layer and averaged over layers.

    For one layer with E experts: E * sum_e f_e * P_e, where f_e = share of the top-k picks that
    went to expert e (times k) and P_e = mean router probability of e. Balanced routing gives k.
    transformers' own version pools all layers before multiplying, which lets one layer starve
    some experts as long as another layer uses them; per layer, every layer is pushed to use all.
    """
    losses = []
    for logits in router_logits:  # each (N, E)
        probs = logits.float().softmax(dim=-1)
        n_experts = probs.shape[-1]
        picks = probs.topk(top_k, dim=-1).indices  # (N, k)
        f = torch.zeros(n_experts).index_add_(0, picks.reshape(-1), torch.ones(picks.numel()))
        f = f / probs.shape[0]  # (E,), sums to k
        losses.append(n_experts * (f * probs.mean(dim=0)).sum())
    return torch.stack(losses).mean()


def new_model(cfg: RecipeConfig, eos_id: int) -> Qwen3MoeForCausalLM:
    torch.manual_seed(cfg.seed)
    model = Qwen3MoeForCausalLM(model_config(cfg, eos_id))
    # The plain per-expert loop: on a CPU it is ~3x faster than grouped_mm for these tiny
    # experts, and it is deterministic.
    model.set_experts_implementation("eager")
    return model.float()


@torch.no_grad()
def heldout_loss(model, ids: torch.Tensor, seq_len: int, n_windows: int) -> float:
    """Mean next-token loss (nats) on `n_windows` evenly spaced windows of held-out ids."""
    model.eval()
    stride = max(1, (ids.numel() - seq_len - 1) // n_windows)
    windows = torch.stack(
        [ids[i * stride : i * stride + seq_len + 1] for i in range(n_windows)]
    )  # (n, seq_len + 1)
    targets = windows[:, 1:].contiguous()
    # shift_labels: our targets are already shifted (transformers would shift `labels` again)
    out = model(input_ids=windows[:, :-1], labels=targets, shift_labels=targets)
    model.train()
    return float(out.loss)


def train_steps(model, train_ids, heldout_ids, cfg: RecipeConfig, n_steps: int | None = None,
                progress: bool = True) -> list[dict]:
    """Run the first `n_steps` (default: all) steps of the schedule; returns the per-step log."""
    n_steps = cfg.steps if n_steps is None else min(n_steps, cfg.steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "norm" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8,
    )
    model.train()
    log: list[dict] = []
    bar = tqdm(range(n_steps), desc="training tiny-moe", disable=not progress, unit="step")
    for step in bar:
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = batch_at(train_ids, gen, cfg)  # (B, T + 1)
        out = model(input_ids=batch[:, :-1], output_router_logits=True)
        logits = out.logits.float()  # (B, T, V)
        lm = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                               batch[:, 1:].reshape(-1))
        aux = load_balancing_loss(out.router_logits, cfg.top_k)
        opt.zero_grad(set_to_none=True)
        (lm + cfg.aux_loss_coef * aux).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lm_loss = float(lm.detach())
        entry = {"step": step, "lr": lr, "loss": lm_loss, "aux_loss": float(aux.detach())}
        if heldout_ids is not None and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            entry["heldout_loss"] = heldout_loss(model, heldout_ids, cfg.seq_len, cfg.eval_batches)
        log.append(entry)
        bar.set_postfix(loss=f"{lm_loss:.3f}")
    return log


def build(out_dir: str | Path, cfg: RecipeConfig | None = None, progress: bool = True) -> Path:
    """Train tokenizer and model by the recipe and save both (HF layout) plus train_log.json.

    Returns out_dir. The model card (MODEL_CARD.md, metrics.json) is written by `card.write_card`.
    """
    cfg = cfg or RecipeConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wall0, cpu0 = time.perf_counter(), time.process_time()

    files = corpus.source_files()
    train_files, heldout_files = corpus.split(files)
    tok = as_transformers(train_tokenizer((f.text for f in train_files), cfg.vocab_size),
                          cfg.max_position_embeddings)
    if len(tok) != cfg.vocab_size:
        raise RuntimeError(f"tokenizer has {len(tok)} tokens, expected {cfg.vocab_size}: "
                           "the corpus is too small for this vocab_size; lower it")
    tokenizer_s = time.perf_counter() - wall0
    train_ids, heldout_ids = encode_files(tok, train_files), encode_files(tok, heldout_files)

    model = new_model(cfg, tok.eos_token_id)
    log = train_steps(model, train_ids, heldout_ids, cfg, progress=progress)

    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    record = {
        "recipe": asdict(cfg),
        "corpus": {
            "stdlib": str(corpus.stdlib_dir()),
            "python": platform.python_version(),
            "fingerprint": corpus.fingerprint(files),
            "train_files": len(train_files),
            "heldout_files": len(heldout_files),
            "train_tokens": int(train_ids.numel()),
            "heldout_tokens": int(heldout_ids.numel()),
        },
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "tokenizer_wall_s": round(tokenizer_s, 1),
        "wall_s": round(time.perf_counter() - wall0, 1),
        "cpu_s": round(time.process_time() - cpu0, 1),
        "steps": log,
    }
    (out_dir / "train_log.json").write_text(json.dumps(record, indent=1))
    return out_dir
