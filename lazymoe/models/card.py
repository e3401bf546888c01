"""Measure the bundled model and write its card: metrics.json + MODEL_CARD.md beside the weights.

    python -m lazymoe.models.card [model_dir]
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from lazymoe.models import bundled, evaluate
from lazymoe.models.params import param_counts
from lazymoe.paths import bundled_model_dir

# Prompts end on a word, never on whitespace: the BPE glues a space to the word after it
# (" name") and a newline to the indentation after it ("\n    "), so a prompt ending in
# whitespace asks the model to continue from a token split it never saw in training.
PROMPTS = (
    "def __init__(self, name",
    "import os\nimport sys\n\n\ndef main():\n    args",
    "    for i in range(len(",
    "class Error(Exception):\n    def",
)


def measure(model_dir: str | Path | None = None, max_heldout_tokens: int | None = None) -> dict:
    """All the card's numbers, as a JSON-able dict."""
    path = Path(model_dir) if model_dir is not None else bundled_model_dir()
    model, tok = bundled.load_model(path), bundled.load_tokenizer(path)
    ids = bundled.heldout_ids(tok, max_heldout_tokens)
    counts = param_counts(model.config)
    stats = evaluate.routing_stats(model, ids)
    experts = {}
    for layer in range(stats.num_layers):
        experts[str(layer)] = {
            str(e): [[tok.convert_ids_to_tokens(t), n, round(share, 3)]
                     for t, n, share in stats.expert_tokens(layer, e, k=6)]
            for e in range(stats.num_experts)
        }
    samples = []
    for prompt in PROMPTS:
        text = evaluate.greedy(model, tok, prompt, max_new_tokens=48)
        samples.append({"prompt": prompt, "continuation": text,
                        "parses": evaluate.complete_lines_parse(prompt + text)})
    return {
        "vocab_size": model.config.vocab_size,
        "heldout_tokens": int(ids.numel()),
        "heldout_perplexity": round(evaluate.heldout_perplexity(model, ids), 3),
        "uniform_perplexity": model.config.vocab_size,
        "params_total": counts.total,
        "params_active_per_token": counts.active,
        "params_per_expert": counts.per_expert,
        "safetensors_bytes": (path / "model.safetensors").stat().st_size,
        "routing_tokens": int(stats.token_ids.numel()),
        "load_entropy_bits": [round(float(x), 3) for x in stats.load_entropy_bits],
        "router_entropy_bits": [round(float(x), 3) for x in stats.router_entropy_bits],
        "uniform_entropy_bits": round(stats.uniform_entropy_bits, 3),
        "max_expert_load": [round(float(x), 3) for x in stats.load.max(dim=1).values],
        "min_expert_load": [round(float(x), 3) for x in stats.load.min(dim=1).values],
        "expert_top_tokens": experts,
        "samples": samples,
    }


def _fmt_token(t: str) -> str:
    shown = t.replace("Ġ", "·").replace("Ċ", "\\n").replace("ĉ", "\\t").replace("|", "\\|")
    return f"`{shown}`"


def render(metrics: dict, train_log: dict) -> str:
    """MODEL_CARD.md text from metrics and train_log.json."""
    r, c = train_log["recipe"], train_log["corpus"]
    m = metrics
    steps = train_log["steps"]
    tokens_seen = r["steps"] * r["batch_size"] * r["seq_len"]
    lines = [
        "# tiny-moe: the lazymoe course's bundled Mixture-of-Experts model",
        "",
        "A small Qwen3-MoE-architecture model trained from scratch on the CPU by "
        "`lazymoe.models.recipe` on the Python standard library's own source code "
        f"(Python {c['python']}, {c['train_files']} files trained on, {c['heldout_files']} held out).",
        "It is a tiny *code* model: it has seen Python and nothing else. It exists so every learner "
        "can watch a real router pick real experts on a laptop with no network.",
        "",
        "## Shape",
        "",
        "| | |", "|---|---|",
        "| architecture | `Qwen3MoeForCausalLM` (transformers), `qwen3moe` (llama.cpp) |",
        f"| layers / hidden / heads (kv) / head dim | {r['num_layers']} / {r['hidden_size']} / "
        f"{r['num_heads']} ({r['num_kv_heads']}) / {r['head_dim']} |",
        f"| experts per layer / top-k / expert width | {r['num_experts']} / {r['top_k']} / "
        f"{r['moe_intermediate_size']} (norm_topk_prob = true) |",
        f"| vocabulary | {m['vocab_size']} byte-level BPE tokens (GPT-2 split regex) |",
        f"| parameters | {m['params_total']:,} total, {m['params_active_per_token']:,} active per "
        f"token, {m['params_per_expert']:,} per expert |",
        f"| file | model.safetensors, float32, {m['safetensors_bytes'] / 1e6:.1f} MB |",
        "",
        "## Training",
        "",
        f"{r['steps']} steps of {r['batch_size']} x {r['seq_len']} tokens ({tokens_seen:,} tokens; "
        f"the training split has {c['train_tokens']:,}), AdamW lr {r['lr']} (warmup "
        f"{r['warmup_steps']}, cosine to {r['lr'] * r['min_lr_ratio']:g}), weight decay "
        f"{r['weight_decay']}, per-layer load-balancing loss coefficient {r['aux_loss_coef']}, seed "
        f"{r['seed']}. torch {train_log['torch']}, {train_log['threads']} thread(s): "
        f"{train_log['wall_s']:.0f} s wall, {train_log['cpu_s']:.0f} s CPU (tokenizer "
        f"{train_log['tokenizer_wall_s']:.0f} s of it). Loss per step: `train_log.json`.",
        "",
        f"Training loss: first step {steps[0]['loss']:.3f} nats "
        f"(uniform: ln {m['vocab_size']} = {math.log(m['vocab_size']):.3f}), last step "
        f"{steps[-1]['loss']:.3f}.",
        "",
        "## Quality",
        "",
        f"- Held-out perplexity: **{m['heldout_perplexity']:.2f}** on {m['heldout_tokens']:,} tokens "
        f"of stdlib files never trained on; a model that knows nothing scores "
        f"{m['uniform_perplexity']} (the vocabulary size).",
        "- Greedy continuations of four prompts (`parses`: the complete lines are valid Python):",
        "",
    ]
    for s in m["samples"]:
        lines += [f"  - parses: {s['parses']}", "", "    ```python",
                  *("    " + ln for ln in (s["prompt"] + s["continuation"]).split("\n")),
                  "    ```", ""]
    lines += [
        "## Routing",
        "",
        f"Measured on the first {m['routing_tokens']:,} held-out tokens. Uniform routing would give "
        f"an entropy of log2({r['num_experts']}) = {m['uniform_entropy_bits']:.2f} bits.",
        "",
        "| layer | load entropy (bits) | mean router entropy per token (bits) | busiest expert | "
        "idlest expert |",
        "|---|---|---|---|---|",
    ]
    for layer, (le, re_, mx, mn) in enumerate(zip(m["load_entropy_bits"], m["router_entropy_bits"],
                                                  m["max_expert_load"], m["min_expert_load"], strict=True)):
        lines.append(f"| {layer} | {le:.3f} | {re_:.3f} | {mx:.1%} | {mn:.1%} |")
    lines += [
        "",
        "Load entropy: how evenly the layer spreads its top-k picks over its experts over the "
        "whole text (uniform: every expert equally busy). Router entropy: how spread out the "
        "router's probabilities are for a single token (2 bits would mean about 4 equally likely "
        "experts). The balancing loss keeps every expert in use; the router still prefers a few "
        "experts for each token, and which ones depends on the token (tables below): that is "
        "specialization, and it is what gives an expert cache something to exploit.",
        "",
        "### Which tokens each expert takes (top-1 choice; share = fraction of that token's "
        "occurrences routed to this expert)",
        "",
    ]
    for layer, per_expert in m["expert_top_tokens"].items():
        lines += [f"Layer {layer}:", "", "| expert | most frequent tokens (count, share) |",
                  "|---|---|"]
        for e, toks in per_expert.items():
            cells = ", ".join(f"{_fmt_token(t)} ({n}, {share:.0%})" for t, n, share in toks)
            lines.append(f"| {e} | {cells} |")
        lines.append("")
    lines += ["Regenerate this card: `python -m lazymoe.models.card`.", ""]
    return "\n".join(lines)


def write_card(model_dir: str | Path | None = None) -> dict:
    path = Path(model_dir) if model_dir is not None else bundled_model_dir()
    metrics = measure(path)
    train_log = json.loads((path / "train_log.json").read_text())
    (path / "metrics.json").write_text(json.dumps(metrics, indent=1, ensure_ascii=False))
    (path / "MODEL_CARD.md").write_text(render(metrics, train_log))
    return metrics


if __name__ == "__main__":
    write_card(sys.argv[1] if len(sys.argv) > 1 else None)
