"""Write a random-weight model of a given `ModelShape` as BOTH a Hugging Face checkpoint and a GGUF.

Every tensor is drawn once and written to both files, so lazymoe (safetensors) and llama.cpp (GGUF)
compute with the same bits. Tensors stream to disk one at a time: a 61 GB model needs no 61 GB of
RAM. The tokenizer is byte-level (256 byte tokens, one merge, one special token), padded to the
model's vocabulary in the GGUF, so both engines tokenize identically.

    python -m lazymoe.bench.writer qwen3-30b-a3b /data/q30 --routing zipf --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from lazymoe.bench.shapes import SHAPES, ModelShape, get_shape, router_row_scales

EOS_TEXT = "<|endoftext|>"
INIT_STD = 0.02  # std of random weights: keeps activations finite over 48 layers


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (used by byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def byte_vocab() -> tuple[list[str], list[str]]:
    """Tokens (256 bytes, one merge result, EOS) and merges of the byte-level tokenizer."""
    tokens = [_bytes_to_unicode()[b] for b in range(256)]
    space = _bytes_to_unicode()[ord(" ")]
    merges = [f"{space} {space}"]  # llama.cpp needs a non-empty merge list
    return [*tokens, space + space, EOS_TEXT], merges


def write_hf_tokenizer(out_dir: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tokens, merges = byte_vocab()
    vocab = {t: i for i, t in enumerate(tokens[:-1])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS_TEXT])
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS_TEXT, "pad_token": EOS_TEXT,
        "model_max_length": 1 << 20}, indent=1))


def hf_config(shape: ModelShape, eos_id: int, routing: str = "uniform", skew: float = 0.0) -> dict:
    return {
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
        "vocab_size": shape.vocab_size, "hidden_size": shape.hidden_size,
        "intermediate_size": 6 * shape.moe_intermediate_size,  # unused: every layer is sparse
        "num_hidden_layers": shape.num_layers, "num_attention_heads": shape.num_heads,
        "num_key_value_heads": shape.num_kv_heads, "head_dim": shape.head_dim,
        "num_experts": shape.num_experts, "num_experts_per_tok": shape.top_k,
        "moe_intermediate_size": shape.moe_intermediate_size, "norm_topk_prob": True,
        "decoder_sparse_step": 1, "mlp_only_layers": [], "max_position_embeddings": shape.max_position_embeddings,
        "rms_norm_eps": shape.rms_norm_eps, "rope_theta": shape.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": shape.rope_theta},
        "hidden_act": "silu", "attention_bias": False, "tie_word_embeddings": False,
        "bos_token_id": eos_id, "eos_token_id": eos_id, "dtype": "bfloat16", "torch_dtype": "bfloat16",
        "lazymoe_bench": {"shape": shape.name, "random_weights": True, "routing": routing, "skew": skew},
    }


def tensor_plan(shape: ModelShape) -> Iterator[tuple[str, tuple[int, ...], str, list[str]]]:
    """(gguf name, numpy shape, kind, hf names) in file order. Expert tensors are fused (E, ...) in
    the GGUF and one tensor per expert in the safetensors (the Hub layout of Qwen3-MoE)."""
    d, hd, e, i = shape.hidden_size, shape.head_dim, shape.num_experts, shape.moe_intermediate_size
    yield "token_embd.weight", (shape.vocab_size, d), "dense", ["model.embed_tokens.weight"]
    for layer in range(shape.num_layers):
        p, b = f"model.layers.{layer}.", f"blk.{layer}."
        yield b + "attn_norm.weight", (d,), "norm", [p + "input_layernorm.weight"]
        yield b + "attn_q.weight", (shape.num_heads * hd, d), "dense", [p + "self_attn.q_proj.weight"]
        yield b + "attn_k.weight", (shape.num_kv_heads * hd, d), "dense", [p + "self_attn.k_proj.weight"]
        yield b + "attn_v.weight", (shape.num_kv_heads * hd, d), "dense", [p + "self_attn.v_proj.weight"]
        yield b + "attn_output.weight", (d, shape.num_heads * hd), "dense", [p + "self_attn.o_proj.weight"]
        yield b + "attn_q_norm.weight", (hd,), "norm", [p + "self_attn.q_norm.weight"]
        yield b + "attn_k_norm.weight", (hd,), "norm", [p + "self_attn.k_norm.weight"]
        yield b + "ffn_norm.weight", (d,), "norm", [p + "post_attention_layernorm.weight"]
        yield b + "ffn_gate_inp.weight", (e, d), f"router:{layer}", [p + "mlp.gate.weight"]
        for proj, gguf_name, dims in (("gate_proj", "ffn_gate_exps", (i, d)), ("up_proj", "ffn_up_exps", (i, d)),
                                      ("down_proj", "ffn_down_exps", (d, i))):
            yield (b + gguf_name + ".weight", (e, *dims), "dense",
                   [f"{p}mlp.experts.{x}.{proj}.weight" for x in range(e)])
    yield "output_norm.weight", (d,), "norm", ["model.norm.weight"]
    yield "output.weight", (shape.vocab_size, d), "dense", ["lm_head.weight"]


def write_model(shape: ModelShape, out_dir: str | Path, routing: str = "uniform", skew: float = 1.0,
                seed: int = 0, device: str = "cpu", gguf_path: str | Path | None = None,
                formats: tuple[str, ...] = ("safetensors", "gguf")) -> dict:
    """Write config.json, tokenizer, model.safetensors and model-bf16.gguf (BF16) into out_dir.

    `formats` may leave one file out: the same seed draws the same tensors, so writing the GGUF
    now and the safetensors later (after deleting the GGUF) still gives both engines the same bits,
    with half the disk or RAM. Returns {"safetensors": path, "gguf": path, "seconds", "bytes"}.
    """
    import gguf

    if routing not in ("uniform", "zipf"):
        raise ValueError(f"routing={routing!r}: use 'uniform' or 'zipf'")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    unknown = set(formats) - {"safetensors", "gguf"}
    if unknown or not formats:
        raise ValueError(f"formats={formats!r}: give 'safetensors', 'gguf' or both")
    gguf_path = Path(gguf_path) if gguf_path else out_dir / "model-bf16.gguf"
    if "gguf" not in formats:
        gguf_path = Path(os.devnull)  # drawn and thrown away: the random stream stays the same
    started = time.perf_counter()
    tokens, merges = byte_vocab()
    eos_id = len(tokens) - 1
    plan = list(tensor_plan(shape))

    # GGUF metadata and tensor table first (llama.cpp's qwen3moe keys).
    writer = gguf.GGUFWriter(str(gguf_path), "qwen3moe")
    writer.add_name(f"lazymoe-bench {shape.name} random {routing}")
    writer.add_block_count(shape.num_layers)
    writer.add_context_length(shape.max_position_embeddings)
    writer.add_embedding_length(shape.hidden_size)
    writer.add_feed_forward_length(6 * shape.moe_intermediate_size)
    writer.add_head_count(shape.num_heads)
    writer.add_head_count_kv(shape.num_kv_heads)
    writer.add_key_length(shape.head_dim)
    writer.add_value_length(shape.head_dim)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_layer_norm_rms_eps(shape.rms_norm_eps)
    writer.add_expert_count(shape.num_experts)
    writer.add_expert_used_count(shape.top_k)
    writer.add_expert_feed_forward_length(shape.moe_intermediate_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
    pad = [f"<|pad{n}|>" for n in range(shape.vocab_size - len(tokens))]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens + pad)
    writer.add_token_types([gguf.TokenType.NORMAL] * (len(tokens) - 1) + [gguf.TokenType.CONTROL]
                           + [gguf.TokenType.UNUSED] * len(pad))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(eos_id)
    writer.add_eos_token_id(eos_id)
    writer.add_add_bos_token(False)
    for name, np_shape, kind, _ in plan:
        dtype = gguf.GGMLQuantizationType.F32 if kind == "norm" else gguf.GGMLQuantizationType.BF16
        nbytes = int(np.prod(np_shape)) * (4 if kind == "norm" else 2)
        writer.add_tensor_info(name, np_shape, np.dtype(np.float32 if kind == "norm" else np.uint16),
                               nbytes, raw_dtype=dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()

    # safetensors header: every tensor BF16, in the same order as the GGUF.
    header, offset = {}, 0
    for _, np_shape, _, hf_names in plan:
        per = np_shape[1:] if len(hf_names) > 1 else np_shape
        nbytes = int(np.prod(per)) * 2
        for hf_name in hf_names:
            header[hf_name] = {"dtype": "BF16", "shape": list(per), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
    header["__metadata__"] = {"format": "pt", "lazymoe_bench": f"{shape.name} {routing} seed={seed}"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    st_path = out_dir / "model.safetensors" if "safetensors" in formats else Path(os.devnull)
    gen = torch.Generator(device=device).manual_seed(seed)
    rng = np.random.default_rng(seed)
    with open(st_path, "wb") as st:
        st.write(struct.pack("<Q", len(blob)) + blob)
        for _name, np_shape, kind, _ in plan:
            if kind == "norm":
                values = torch.ones(np_shape, dtype=torch.float32)
                writer.write_tensor_data(values.numpy())
                st.write(values.to(torch.bfloat16).view(torch.uint16).numpy().tobytes())
                continue
            values = torch.randn(np_shape, generator=gen, device=device, dtype=torch.float32) * INIT_STD
            if kind.startswith("router") and routing == "zipf":
                scales = torch.from_numpy(router_row_scales(shape.num_experts, skew, rng)).to(device)
                values *= scales[:, None]  # (E, D): row e scaled by s_e
            raw = values.to(torch.bfloat16).view(torch.uint16).cpu().numpy()  # bf16 bits
            writer.write_tensor_data(raw)
            raw.tofile(st)
    writer.close()
    (out_dir / "config.json").write_text(json.dumps(hf_config(shape, eos_id, routing, skew if routing == "zipf" else 0.0), indent=1))
    write_hf_tokenizer(out_dir)
    seconds = time.perf_counter() - started
    total = sum(p.stat().st_size for p in (st_path, gguf_path) if p.is_file())
    return {"safetensors": str(st_path), "gguf": str(gguf_path), "seconds": seconds, "bytes": total,
            "routing": routing, "skew": skew if routing == "zipf" else 0.0, "shape": shape.name}


def set_routing(model_dir: str | Path, gguf_path: str | Path | None = None, routing: str = "zipf",
                skew: float = 1.0, seed: int = 0) -> dict:
    """Turn a uniform-routing model written by `write_model` into a skewed one, in place.

    Only the router rows change (each scaled by `router_row_scales`), in the safetensors and the
    GGUF alike, so a 61 GB model need not be written twice. Returns the per-layer scales used.
    """
    import gguf

    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text())
    bench = config.get("lazymoe_bench", {})
    if bench.get("routing") != "uniform" or routing != "zipf":
        raise ValueError(f"{model_dir}: routing is {bench.get('routing')!r}; set_routing turns a "
                         "'uniform' model (from write_model) into 'zipf' once")
    gguf_path = Path(gguf_path) if gguf_path else next(iter(sorted(model_dir.glob("*.gguf"))), None)
    shape = get_shape(bench["shape"]) if bench.get("shape") in SHAPES else None
    num_layers = config["num_hidden_layers"]
    num_experts = config.get("num_experts") or config["num_local_experts"]
    rng = np.random.default_rng(seed)
    scales = {layer: router_row_scales(num_experts, skew, rng) for layer in range(num_layers)}

    # where each layer's router tensor lives in each file that is there: {file: {layer: (start, end)}}
    spans: dict[Path, dict[int, tuple[int, int]]] = {}
    st_path = model_dir / "model.safetensors"
    if st_path.is_file():
        with open(st_path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
        spans[st_path] = {layer: tuple(8 + header_len + x for x in
                                       header[f"model.layers.{layer}.mlp.gate.weight"]["data_offsets"])
                          for layer in range(num_layers)}
    if gguf_path is not None and gguf_path.is_file():
        reader = gguf.GGUFReader(gguf_path)
        offsets = {t.name: (int(t.data_offset), int(t.n_bytes)) for t in reader.tensors}
        del reader
        spans[gguf_path] = {layer: (offsets[f"blk.{layer}.ffn_gate_inp.weight"][0],
                                    sum(offsets[f"blk.{layer}.ffn_gate_inp.weight"]))
                            for layer in range(num_layers)}
    if not spans:
        raise FileNotFoundError(f"{model_dir}: neither model.safetensors nor a GGUF to patch")
    for path, layer_spans in spans.items():
        buf = np.memmap(path, dtype=np.uint8, mode="r+")
        for layer, (begin, end) in layer_spans.items():
            rows = _bf16_rows(buf, begin, end, num_experts)
            scaled = torch.from_numpy(_bf16_to_f32(rows)) * torch.from_numpy(scales[layer])[:, None]
            buf[begin:end] = scaled.to(torch.bfloat16).view(torch.uint16).numpy().view(np.uint8).ravel()
        buf.flush()
        del buf
    bench.update(routing="zipf", skew=skew, shape=bench.get("shape", shape.name if shape else None))
    config["lazymoe_bench"] = bench
    config_path.write_text(json.dumps(config, indent=1))
    return {layer: s.tolist() for layer, s in scales.items()}


def _bf16_rows(buf: np.ndarray, begin: int, end: int, rows: int) -> np.ndarray:
    return np.array(buf[begin:end]).view(np.uint16).reshape(rows, -1)


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape")
    parser.add_argument("out_dir")
    parser.add_argument("--routing", default="uniform", choices=["uniform", "zipf"])
    parser.add_argument("--skew", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--gguf", default=None, help="where the GGUF goes (default: inside out_dir)")
    parser.add_argument("--only", choices=["safetensors", "gguf"], default=None,
                        help="write one of the two files (the same bits as writing both)")
    parser.add_argument("--set-routing", action="store_true",
                        help="patch an existing uniform model in out_dir to --routing zipf in place")
    args = parser.parse_args(argv)
    if args.set_routing:
        set_routing(args.out_dir, args.gguf, args.routing, args.skew, args.seed)
        print(json.dumps({"patched": args.out_dir, "routing": args.routing, "skew": args.skew}))
        return 0
    info = write_model(get_shape(args.shape), args.out_dir, args.routing, args.skew, args.seed,
                       args.device, args.gguf, (args.only,) if args.only else ("safetensors", "gguf"))
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
