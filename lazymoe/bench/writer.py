"""Write a random-weight model of a given `ModelShape` as BOTH a Hugging Face checkpoint and a GGUF.

Every tensor is drawn once and written to both files, so lazymoe (safetensors) and llama.cpp (GGUF)
compute with the same bits. Tensor names, shapes and order come from the architecture registry
(`lazymoe.models.archs`, Qwen3-MoE's record), and the GGUF from the same writer the exporter uses
(`lazymoe.models.gguf_write`). Tensors stream to disk one at a time: a 61 GB model needs no 61 GB
of RAM. The tokenizer is byte-level (256 byte tokens, one merge, one special token), padded to the
model's vocabulary in the GGUF, so both engines tokenize identically.

    python -m lazymoe.bench.writer qwen3-30b-a3b /data/q30 --routing zipf --device cuda
    python -m lazymoe.bench.writer qwen3-30b-a3b /data/q30 --format q4_0   # model-q4_0.gguf only

A quantized format (q8_0, q4_0, q4_k_m, ...: `lazymoe.models.gguf_write.OUT_TYPES`) writes the
GGUF alone, the same random draw quantized: both engines then read that one file
(`lazymoe bench --model /data/q30/model-q4_0.gguf`), since a safetensors file could only hold the
values before quantization.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import time
from pathlib import Path

import numpy as np
import torch

from lazymoe.bench.shapes import SHAPES, ModelShape, get_shape, router_row_scales
from lazymoe.models.archs import TensorSlot, get_arch
from lazymoe.models.gguf_write import OUT_TYPES, vocab_from_tokenizer_files, write_gguf

# ModelShape describes a Qwen3-MoE-style decoder (q/k norms per head, every layer sparse)
ARCH = get_arch("qwen3_moe")

EOS_TEXT = "<|endoftext|>"
INIT_STD = 0.02  # std of random weights: keeps activations finite over 48 layers
LOSSLESS = ("bf16", "f32")  # GGUF types that hold the bfloat16 draw exactly, as the safetensors does


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
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOS_TEXT, "eos_token": EOS_TEXT,
        "pad_token": EOS_TEXT, "model_max_length": 1 << 20}, indent=1))


def hf_config(shape: ModelShape, eos_id: int, routing: str = "uniform", skew: float = 0.0) -> dict:
    return {
        "architectures": [ARCH.hf_class], "model_type": ARCH.model_type,
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


def tensor_slots(shape: ModelShape, config: dict | None = None) -> list[TensorSlot]:
    """Every tensor in file order (the registry's): expert tensors are fused (E, ...) in the GGUF
    and one tensor per expert in the safetensors (the Hub layout of Qwen3-MoE)."""
    return ARCH.tensors(config or hf_config(shape, eos_id=len(byte_vocab()[0]) - 1))


def write_model(shape: ModelShape, out_dir: str | Path, routing: str = "uniform", skew: float = 1.0,
                seed: int = 0, device: str = "cpu", gguf_path: str | Path | None = None,
                formats: tuple[str, ...] = ("safetensors", "gguf"), gguf_type: str = "bf16") -> dict:
    """Write config.json, tokenizer, model.safetensors and model-{gguf_type}.gguf into out_dir.

    `formats` may leave one file out: the same seed draws the same tensors, so writing the GGUF
    now and the safetensors later (after deleting the GGUF) still gives both engines the same bits,
    with half the disk or RAM. `gguf_type`: bf16 (the draw's own bits), or a quantized type of
    `OUT_TYPES` (q8_0, q4_0, q4_k_m, ...), GGUF only. Returns {"safetensors": path, "gguf": path,
    "gguf_type", "seconds", "bytes"}.
    """

    if routing not in ("uniform", "zipf"):
        raise ValueError(f"routing={routing!r}: use 'uniform' or 'zipf'")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    unknown = set(formats) - {"safetensors", "gguf"}
    if unknown or not formats:
        raise ValueError(f"formats={formats!r}: give 'safetensors', 'gguf' or both")
    if gguf_type not in OUT_TYPES:
        raise ValueError(f"gguf_type={gguf_type!r}: choose one of {sorted(OUT_TYPES)}")
    if "safetensors" in formats and gguf_type not in LOSSLESS:
        raise ValueError(f"gguf_type={gguf_type!r} with a safetensors file: the safetensors would "
                         "hold the values before quantization, not the GGUF's bits. Write "
                         "formats=('gguf',) and give both engines the GGUF file")
    gguf_path = Path(gguf_path) if gguf_path else out_dir / f"model-{gguf_type}.gguf"
    if "gguf" not in formats:
        gguf_path = Path(os.devnull)  # nothing written there: the tensors are drawn all the same
    started = time.perf_counter()
    eos_id = len(byte_vocab()[0]) - 1
    config = hf_config(shape, eos_id, routing, skew if routing == "zipf" else 0.0)
    slots = tensor_slots(shape, config)
    write_hf_tokenizer(out_dir)  # first: the GGUF's vocabulary is read from it

    # safetensors header: every tensor BF16, in the same order as the GGUF.
    header, offset = {}, 0
    for slot in slots:
        per = slot.shape[1:] if slot.kind == "experts" else slot.shape
        nbytes = int(np.prod(per)) * 2
        for source in slot.sources:
            header[source] = {"dtype": "BF16", "shape": list(per), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
    header["__metadata__"] = {"format": "pt", "lazymoe_bench": f"{shape.name} {routing} seed={seed}"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    st_path = out_dir / "model.safetensors" if "safetensors" in formats else Path(os.devnull)
    gen = torch.Generator(device=device).manual_seed(seed)
    rng = np.random.default_rng(seed)

    def draw(slot: TensorSlot) -> torch.Tensor:
        """One tensor's values, drawn in file order (the random stream fixes the bits), also
        appended to the safetensors: bfloat16 values, or float32 ones for the norms."""
        if slot.kind == "norm":
            values = torch.ones(slot.shape, dtype=torch.float32)
            st.write(values.to(torch.bfloat16).view(torch.uint16).numpy().tobytes())
            return values
        values = torch.randn(slot.shape, generator=gen, device=device, dtype=torch.float32) * INIT_STD
        if slot.kind == "router" and routing == "zipf":
            scales = torch.from_numpy(router_row_scales(shape.num_experts, skew, rng)).to(device)
            values *= scales[:, None]  # (E, D): row e scaled by s_e
        values = values.to(torch.bfloat16).cpu()
        values.view(torch.uint16).numpy().tofile(st)  # bf16 bits
        return values

    with open(st_path, "wb") as st:
        st.write(struct.pack("<Q", len(blob)) + blob)
        if "gguf" in formats:
            vocab = vocab_from_tokenizer_files(out_dir, "qwen2", shape.vocab_size)
            write_gguf(gguf_path, ARCH, config, draw, gguf_type, vocab,
                       name=f"lazymoe-bench {shape.name} random {routing}", progress=False)
        else:  # drawn in the same order, so a later GGUF-only run gives the same bits
            for slot in slots:
                draw(slot)
    (out_dir / "config.json").write_text(json.dumps(config, indent=1))
    seconds = time.perf_counter() - started
    total = sum(p.stat().st_size for p in (st_path, gguf_path) if p.is_file())
    return {"safetensors": str(st_path), "gguf": str(gguf_path), "gguf_type": gguf_type,
            "seconds": seconds, "bytes": total,
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
    num_experts = ARCH.num_experts(config)
    rng = np.random.default_rng(seed)
    scales = {layer: router_row_scales(num_experts, skew, rng) for layer in range(num_layers)}
    routers = [slot for slot in ARCH.tensors(config) if slot.kind == "router"]  # one per layer

    # where each layer's router lives in each file that is there, and its dtype:
    # {file: {layer: (start, end, "bf16" | "f32")}}; the GGUF keeps routers in F32 (older files: BF16)
    spans: dict[Path, dict[int, tuple[int, int, str]]] = {}
    st_path = model_dir / "model.safetensors"
    if st_path.is_file():
        with open(st_path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
        spans[st_path] = {}
        for slot in routers:
            begin, end = (8 + header_len + x for x in header[slot.sources[0]]["data_offsets"])
            spans[st_path][slot.layer] = (begin, end, "bf16")
    if gguf_path is not None and gguf_path.is_file():
        reader = gguf.GGUFReader(gguf_path)
        where = {t.name: (int(t.data_offset), int(t.n_bytes), t.tensor_type.name.lower()) for t in reader.tensors}
        del reader
        spans[gguf_path] = {}
        for slot in routers:
            begin, nbytes, dtype = where[slot.gguf_name]
            spans[gguf_path][slot.layer] = (begin, begin + nbytes, dtype)
    if not spans:
        raise FileNotFoundError(f"{model_dir}: neither model.safetensors nor a GGUF to patch")
    for path, layer_spans in spans.items():
        buf = np.memmap(path, dtype=np.uint8, mode="r+")
        for layer, (begin, end, dtype) in layer_spans.items():
            raw = np.array(buf[begin:end])
            rows = torch.from_numpy(_bf16_to_f32(raw.view(np.uint16)) if dtype == "bf16" else raw.view(np.float32))
            # rounded to bfloat16 in both files, so both engines still read the same values
            scaled = (rows.reshape(num_experts, -1) * torch.from_numpy(scales[layer])[:, None]).to(torch.bfloat16)
            out = scaled.view(torch.uint16) if dtype == "bf16" else scaled.to(torch.float32)
            buf[begin:end] = out.numpy().view(np.uint8).ravel()
        buf.flush()
        del buf
    bench.update(routing="zipf", skew=skew, shape=bench.get("shape", shape.name if shape else None))
    config["lazymoe_bench"] = bench
    config_path.write_text(json.dumps(config, indent=1))
    return {layer: s.tolist() for layer, s in scales.items()}


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
    parser.add_argument("--format", default="bf16", choices=sorted(OUT_TYPES), dest="gguf_type",
                        help="the GGUF's type; a quantized one (q8_0, q4_0, q4_k_m...) writes the "
                             "GGUF alone, which both engines then read")
    parser.add_argument("--set-routing", action="store_true",
                        help="patch an existing uniform model in out_dir to --routing zipf in place")
    args = parser.parse_args(argv)
    if args.set_routing:
        set_routing(args.out_dir, args.gguf, args.routing, args.skew, args.seed)
        print(json.dumps({"patched": args.out_dir, "routing": args.routing, "skew": args.skew}))
        return 0
    if args.gguf_type not in LOSSLESS and args.only == "safetensors":
        parser.error(f"--format {args.gguf_type} is the GGUF's type: it writes no safetensors")
    formats = ((args.only,) if args.only else
               ("safetensors", "gguf") if args.gguf_type in LOSSLESS else ("gguf",))
    info = write_model(get_shape(args.shape), args.out_dir, args.routing, args.skew, args.seed,
                       args.device, args.gguf, formats, args.gguf_type)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
