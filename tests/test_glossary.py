"""The glossary file: every entry well formed, the words the course uses all there, each taught
where it says, and the loader names the problem in a malformed file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lazymoe import glossary

REPO = Path(__file__).resolve().parents[1]
REQUIRED_TERMS = [
    "bandwidth", "VRAM", "RAM", "PCIe", "NVLink", "token", "prefill", "decode", "KV cache",
    "quantization", "GGUF", "MoE", "expert", "router", "top-k", "hit rate", "cache", "eviction",
    "prefetch", "roofline", "Belady", "DMA", "pinned memory", "NVML", "AVX-512", "CUDA graphs",
    "Triton", "TTFT", "API", "OpenAI-compatible", "throughput", "latency", "batching", "llama.cpp",
    "vLLM", "Ollama", "safetensors",
]


def markdown_of(stem: str) -> str:
    folder = REPO / ("labs" if stem.startswith("lab") else "course")
    (path,) = folder.glob(f"{stem}_*.ipynb")
    cells = json.loads(path.read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown").lower()


def test_the_file_loads_and_covers_the_course_words():
    entries = glossary.load()
    for term in REQUIRED_TERMS:
        entry = glossary.lookup(term, entries)
        assert entry.en.endswith(".") and entry.ko and entry.ko_term


@pytest.mark.parametrize("entry", glossary.load(), ids=lambda e: e.term)
def test_each_word_appears_where_the_glossary_says_it_is_taught(entry):
    text = markdown_of(entry.taught)
    assert any(name.lower() in text for name in (entry.term, *entry.aka)), (
        f"{entry.term!r} is said to be taught in {entry.where}, which never mentions it")


def test_lookup_accepts_other_spellings_and_names_close_words():
    assert glossary.lookup("page-locked memory").term == "pinned memory"
    assert glossary.lookup("kv CACHE").term == "KV cache"
    with pytest.raises(KeyError, match="did you mean"):
        glossary.lookup("cache hit")  # close to "cache" and "hit rate"


def test_search_reads_both_languages():
    assert "KV cache" in [e.term for e in glossary.search("캐시")]
    assert {e.term for e in glossary.search("bandwidth")} >= {"bandwidth", "decode"}
    assert len(glossary.search("")) == len(glossary.load())
    assert "No word matches" in glossary.table_html(glossary.search("zzzz"))


@pytest.mark.parametrize(("text", "problem"), [
    ("- term: x\n  en: y.\n  ko_term: z\n  ko: w\n", "non-empty text for 'taught'"),
    ("- term: x\n  en: y.\n  ko_term: z\n  ko: w\n  taught: 2\n", "non-empty text for 'taught'"),
    ("- term: x\n  en: y.\n  ko_term: z\n  ko: w\n  taught: module2\n", "neither a module"),
    ("- term: x\n  en: y.\n  ko_term: z\n  ko: w\n  taught: \"02\"\n  colour: red\n", "unknown keys"),
    ("- term: x\n  en: y.\n  ko_term: z\n  ko: w\n  taught: \"02\"\n"
     "- term: X\n  en: y.\n  ko_term: z\n  ko: w\n  taught: \"02\"\n", "appears twice"),
    ("- term: x\n  en: a: b\n", "not valid YAML"),
])
def test_a_malformed_file_is_refused_naming_the_problem(tmp_path, text, problem):
    path = tmp_path / "glossary.yaml"
    path.write_text(text)
    with pytest.raises(glossary.GlossaryError, match=problem):
        glossary.load(path)
