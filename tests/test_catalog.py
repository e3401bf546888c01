"""The catalogs: big enough, every row sourced, and malformed rows rejected with a clear message."""

from __future__ import annotations

import shutil

import pytest

from lazymoe import catalog

GPUS_REQUIRED = ["RTX 3060 Ti", "RTX 3070 Ti Laptop", "RTX 3090", "RTX 4060 Laptop", "RTX 4080",
                 "RTX 4090", "RTX 5090", "A100 80GB SXM", "H100 SXM", "H200 SXM", "Tesla P100 PCIe 12GB"]
MODELS_REQUIRED = ["Qwen3-30B-A3B", "Qwen3-Coder-Next-80B", "Qwen3.6-35B-A3B (class)", "GPT-OSS-20B",
                   "GPT-OSS-120B", "Mixtral-8x7B", "OLMoE-1B-7B", "DeepSeek-V3", "Llama-3.1-70B",
                   "Llama-3.2-1B"]
FORMATS_REQUIRED = ["F32", "F16", "BF16", "FP8", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "MXFP4",
                    "Q3_K", "Q2_K"]


def test_hardware_catalog_has_the_machines_the_course_talks_about():
    hw = catalog.all_hardware()
    assert len(hw) >= 30
    for name in GPUS_REQUIRED:
        assert name in hw
    kinds = {h.kind for h in hw.values()}
    assert kinds == {"gpu", "cpu", "unified"}
    assert all(h.source for h in hw.values())
    assert all(h.memory_bytes for h in hw.values() if h.kind != "cpu")


def test_model_and_format_catalogs():
    models, formats = catalog.all_models(), catalog.all_formats()
    assert len(models) >= 15 and all(m.source for m in models.values())
    for name in MODELS_REQUIRED:
        assert name in models
    for name in FORMATS_REQUIRED:
        assert name in formats and formats[name].source
    assert {m.kind for m in models.values()} == {"dense", "moe"}


def test_units_are_converted_once():
    h = catalog.hardware("RTX 4090")
    assert h.memory_bytes == 24 * 2**30 and h.bandwidth_gbps == 1008.0
    assert h.link_gbps == pytest.approx(1.969 * 16)
    assert catalog.model("Qwen3-30B-A3B").params_total == 30.5e9
    assert catalog.weight_format("Q8_0").bits_per_weight == 8.5


def test_moe_rows_add_up():
    for m in catalog.all_models().values():
        if m.has_expert_shapes:
            total = m.params_outside_experts + m.n_moe_layers * m.experts * m.params_per_expert
            assert total == pytest.approx(m.params_total, rel=0.03), m.name


def test_lookup_by_unique_part_of_a_name_and_errors_name_the_choices():
    assert catalog.hardware("4090").name == "RTX 4090"
    assert catalog.model("mixtral").name == "Mixtral-8x7B"
    with pytest.raises(catalog.CatalogError, match="several"):
        catalog.hardware("RTX 30")
    with pytest.raises(catalog.CatalogError, match="no name matches"):
        catalog.model("gpt-5")


@pytest.fixture
def data_copy(tmp_path, monkeypatch):
    shutil.copytree(catalog.catalog_dir(), tmp_path / "catalog")
    monkeypatch.setenv("LAZYMOE_DATA", str(tmp_path))
    return tmp_path / "catalog"


def _edit(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_unknown_unit_names_file_row_and_field(data_copy):
    _edit(data_copy / "hardware.yaml", "bandwidth: 1008 GB/s", "bandwidth: 1008 GB")
    with pytest.raises(catalog.CatalogError, match=r"hardware.yaml, row \d+ \(RTX 4090\).*'bandwidth'.*unit"):
        catalog.all_hardware()


def test_missing_field_is_named(data_copy):
    _edit(data_copy / "models.yaml", "  params_total: 30.5B\n", "")
    with pytest.raises(catalog.CatalogError, match=r"Qwen3-30B-A3B.*missing.*params_total"):
        catalog.all_models()


def test_misspelt_field_is_rejected(data_copy):
    _edit(data_copy / "formats.yaml", "bits_per_weight: 8.5", "bits_per_wieght: 8.5")
    with pytest.raises(catalog.CatalogError, match="unknown field"):
        catalog.all_formats()


def test_parts_that_do_not_add_up_are_rejected(data_copy):
    _edit(data_copy / "models.yaml", "params_outside_experts: 1.54B", "params_outside_experts: 5B")
    with pytest.raises(catalog.CatalogError, match="params_total"):
        catalog.all_models()
