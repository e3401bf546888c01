"""One model of a benchmark: a Hugging Face folder (with a GGUF of the same bits for llama.cpp), or
one GGUF file that every engine reads.

    ModelEntry.from_dir("/data/q30")                # lazymoe reads the safetensors, llama.cpp the GGUF
    ModelEntry.from_gguf("/data/q30/model-q4_0.gguf")  # lazymoe and llama.cpp read this same file

A GGUF entry is how quantized models are compared: the engine keeps the file's experts quantized
(`Engine.from_pretrained("x.gguf")`) and llama.cpp runs the very same bytes. Its results carry
the file's formats (from its tensor types) and size (`gguf_weights`), and its byte counts come
from the file (`gguf_nbytes`), not from the shape at a float width.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from lazymoe.bench.shapes import BYTES_PER_PARAM, ModelShape

GGUF_TYPE = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}
# lazymoe.bench.writer's config "routing" -> what the model's own routers are ("uniform" was the
# old name of random router rows, whose routing is anything but uniform)
ROUTERS = {"uniform": "random", "zipf": "random-zipf"}
PROMPT_TEXT = (
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    a, b = 0, 1\n"
    "    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n"
    "The memory bandwidth of a machine sets how fast it can decode: every new token reads "
    "every active weight once. "
)


def is_gguf_path(path: str | Path) -> bool:
    """A file (a GGUF, whatever its suffix) rather than a model folder."""
    return Path(path).is_file() or (Path(path).suffix.lower() == ".gguf" and not Path(path).is_dir())


def model_config(model_path: str | Path) -> dict:
    """config.json of a model folder, or the same fields read from a GGUF file's metadata."""
    path = Path(model_path)
    if is_gguf_path(path):
        from lazymoe.engine.storage.gguf_config import config_from_gguf, open_reader

        return config_from_gguf(open_reader(path), path)
    return json.loads((path / "config.json").read_text())


@dataclass
class ModelEntry:
    """One model: a Hugging Face folder (model_dir) and a GGUF of the same bits for llama.cpp, or a
    GGUF file alone (model_dir None), which lazymoe and llama.cpp both read."""

    name: str
    model_dir: str | None
    gguf_path: str | None
    routers: str = "trained"  # the model's own routers: trained | random | random-zipf (skewed rows)
    dtype: str = "float32"  # compute dtype (and the GGUF's type when one is exported from model_dir)

    @classmethod
    def from_path(cls, path: str | Path, dtype: str | None = None, name: str | None = None) -> ModelEntry:
        """A folder or a .gguf file, whichever `path` is."""
        return (cls.from_gguf if is_gguf_path(path) else cls.from_dir)(path, dtype=dtype, name=name)

    @classmethod
    def from_dir(cls, model_dir: str | Path, dtype: str | None = None, name: str | None = None) -> ModelEntry:
        model_dir = Path(model_dir)
        config = json.loads((model_dir / "config.json").read_text())
        bench = config.get("lazymoe_bench", {})
        ggufs = sorted(model_dir.glob("*.gguf"))
        dtype = dtype or ("bfloat16" if bench else "float32")
        return cls(name=name or bench.get("shape") or model_dir.name, model_dir=str(model_dir),
                   gguf_path=str(ggufs[0]) if ggufs else None,
                   routers=ROUTERS.get(bench.get("routing"), "trained"), dtype=dtype)

    @classmethod
    def from_gguf(cls, gguf_path: str | Path, dtype: str | None = None, name: str | None = None) -> ModelEntry:
        """A GGUF file alone. A config.json of `lazymoe.bench.writer` beside it tells the shape and
        the routers (random weights: compute in bfloat16, as for the folder's rows); the name is
        then "SHAPE-FORMAT" (qwen3-30b-a3b-q4_0), else the file's stem. Raises GGUFError (with
        what to do) for a file the engine cannot read."""
        path = Path(gguf_path)
        model_config(path)  # a missing, broken or non-MoE file fails here, before any row runs
        beside = path.parent / "config.json"
        bench = json.loads(beside.read_text()).get("lazymoe_bench", {}) if beside.is_file() else {}
        file_type = gguf_weights(path)["file_type"]
        default_name = f"{bench['shape']}-{file_type}" if bench.get("shape") else path.stem
        return cls(name=name or default_name, model_dir=None, gguf_path=str(path),
                   routers=ROUTERS.get(bench.get("routing"), "trained"),
                   dtype=dtype or ("bfloat16" if bench else "float32"))

    @property
    def gguf_only(self) -> bool:
        return self.model_dir is None

    @property
    def model_path(self) -> str:
        """What lazymoe opens: the folder, or the GGUF file of a GGUF-only entry."""
        return self.model_dir or self.gguf_path  # type: ignore[return-value]

    def shape(self) -> ModelShape:
        return ModelShape.from_config(model_config(self.model_path), self.name)

    def nbytes(self) -> dict[str, int]:
        """Byte counts as lazymoe reads them (ModelShape.nbytes' keys): the file's for a GGUF entry."""
        if self.gguf_only:
            return gguf_nbytes(self.gguf_path, self.shape(), self.dtype)["lazymoe"]
        return self.shape().nbytes(self.dtype)

    def describe(self) -> dict:
        """The document's record of this model: the entry, its shape and byte counts; a GGUF
        entry adds its weights (formats, size) and llama.cpp's byte counts (the file's own)."""
        import dataclasses

        shape = self.shape()
        out = {**dataclasses.asdict(self), "shape": dataclasses.asdict(shape), "bytes": self.nbytes()}
        if self.gguf_only:  # (self.nbytes() above is this call's "lazymoe" half)
            out["bytes_llamacpp"] = gguf_nbytes(self.gguf_path, shape, self.dtype)["llamacpp"]
            out["weights"] = gguf_weights(self.gguf_path)
        return out


def prompt_ids(model_path: str | Path, n_tokens: int) -> list[int]:
    """The fixed prompt, tokenized by the model's own tokenizer (a folder's tokenizer.json, or a
    GGUF file's metadata as the engine reads it), cut or repeated to n_tokens."""
    if is_gguf_path(model_path):
        from lazymoe.engine.loading import load_tokenizer

        ids = load_tokenizer(Path(model_path))(PROMPT_TEXT, add_special_tokens=False)["input_ids"]
    else:
        from tokenizers import Tokenizer

        ids = Tokenizer.from_file(str(Path(model_path) / "tokenizer.json")).encode(PROMPT_TEXT).ids
    return (ids * (n_tokens // len(ids) + 1))[:n_tokens]


def ensure_gguf(entry: ModelEntry, cache_dir: Path) -> str | None:
    """The entry's GGUF; exported from its safetensors (same bits) into cache_dir if missing."""
    if entry.gguf_path:
        return entry.gguf_path
    try:
        from lazymoe.models.gguf_export import export_gguf
    except ImportError:
        return None
    out = cache_dir / f"{entry.name}-{GGUF_TYPE[entry.dtype]}.gguf"
    if not out.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        export_gguf(entry.model_dir, out, out_type=GGUF_TYPE[entry.dtype])
    entry.gguf_path = str(out)
    return entry.gguf_path


def _tensors(path: str | Path) -> tuple[tuple[str, str, int, int], ...]:
    """(name, ggml type, elements, bytes) of every tensor in the file (read once per version)."""
    stat = Path(path).stat()
    return _tensor_table(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _tensor_table(path: str, mtime_ns: int, size: int) -> tuple[tuple[str, str, int, int], ...]:
    import gguf

    reader = gguf.GGUFReader(path)
    return tuple((t.name, t.tensor_type.name, int(t.n_elements), int(t.n_bytes)) for t in reader.tensors)


def gguf_weights(path: str | Path) -> dict:
    """What a GGUF holds, for the results: its size, the experts' ggml types ("format": Q8_0,
    or Q4_K+Q6_K for a Q4_K_M file), every tensor type with its count, llama.cpp's file type."""
    import gguf

    reader = gguf.GGUFReader(path)
    ftype = reader.get_field("general.file_type")
    names = {"MOSTLY_Q4_K_S": "q4_k", "MOSTLY_Q4_K_M": "q4_k_m", "ALL_F32": "f32"}
    file_type = None
    if ftype is not None:
        value = int(ftype.contents())
        known = value in {t.value for t in gguf.LlamaFileType}  # a newer llama.cpp may add types
        file_type = gguf.LlamaFileType(value).name if known else f"file_type_{value}"
    tensors = [(name, kind) for name, kind, _, _ in _tensors(path)]
    expert_types = sorted({kind for name, kind in tensors if "_exps." in name})
    return {
        "file": Path(path).name, "bytes": Path(path).stat().st_size,
        "format": "+".join(expert_types) or None,
        "expert_types": expert_types,
        "tensor_types": dict(sorted(Counter(kind for _, kind in tensors).items())),
        "file_type": names.get(file_type, file_type.removeprefix("MOSTLY_").lower()) if file_type else None,
    }


def gguf_nbytes(path: str | Path, shape: ModelShape, dtype: str) -> dict[str, dict[str, int]]:
    """ModelShape.nbytes' counts from the file's tensors, as each engine reads them: "llamacpp"
    every tensor as stored; "lazymoe" the experts as stored (the engine keeps them quantized) and
    the rest at the compute `dtype` (the engine dequantizes the non-expert tensors at load).
    expert_bytes is the largest layer's expert (an engine slot's size; Q4_K_M mixes formats)."""
    tensors = _tensors(path)
    experts = [(name, nbytes) for name, _, _, nbytes in tensors if "_exps." in name]
    per_layer: dict[str, int] = Counter()
    for name, nbytes in experts:
        per_layer[name.split(".")[1]] += nbytes
    experts_total = sum(per_layer.values())
    width = BYTES_PER_PARAM[dtype]
    out = {}
    for engine in ("llamacpp", "lazymoe"):
        dense = {name: (nbytes if engine == "llamacpp" else n * width)
                 for name, _, n, nbytes in tensors if "_exps." not in name}
        embedding = dense.get("token_embd.weight", 0)
        dense_resident = sum(dense.values())
        out[engine] = {
            "expert_bytes": max(per_layer.values()) // shape.num_experts,
            "experts_total_bytes": experts_total,
            "dense_resident_bytes": dense_resident,
            "dense_per_token_bytes": dense_resident - embedding * (shape.vocab_size - 1) // shape.vocab_size,
            "active_expert_bytes_per_token": experts_total * shape.top_k // shape.num_experts,
            "total_bytes": dense_resident + experts_total,
        }
    return out
