"""ExpertStore: one expert read from the checkpoint equals the model's own weights, for every
supported architecture and both tensor layouts; broken checkpoints say what is wrong."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import requires_gpu
from safetensors.torch import save_file

from lazymoe.engine.storage.store import ExpertStore, ExpertStoreError, ExpertWeights

ARCH_CONFIGS = {
    "qwen3_moe": dict(num_experts=4, moe_intermediate_size=16, head_dim=8),
    "olmoe": dict(num_experts=4, intermediate_size=24),
    "mixtral": dict(num_local_experts=4, intermediate_size=24),
    "qwen2_moe": dict(num_experts=4, moe_intermediate_size=16, shared_expert_intermediate_size=24),
}


def tiny_model(arch: str, num_layers: int = 2):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    fields = dict(
        vocab_size=64, hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=48, num_experts_per_tok=2,
    )  # fmt: skip
    config = AutoConfig.for_model(arch, **{**fields, **ARCH_CONFIGS[arch]})
    return AutoModelForCausalLM.from_config(config).eval()


def expected_expert(model, layer: int, expert: int) -> ExpertWeights:
    """The model's own weights of one expert (transformers 5 fuses them in memory)."""
    experts = model.model.layers[layer].mlp.experts
    gate, up = experts.gate_up_proj[expert].detach().chunk(2, dim=0)
    return ExpertWeights(gate, up, experts.down_proj[expert].detach())


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """arch -> (model, folder written by save_pretrained)."""
    out = {}
    for arch in ARCH_CONFIGS:
        model = tiny_model(arch)
        path = tmp_path_factory.mktemp(arch)
        model.save_pretrained(path)
        out[arch] = (model, path)
    return out


def assert_same(got: ExpertWeights, want: ExpertWeights):
    for name in ("gate", "up", "down"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name


@pytest.mark.parametrize("arch", list(ARCH_CONFIGS))
def test_reads_each_expert_of_a_saved_checkpoint(checkpoints, arch):
    model, path = checkpoints[arch]
    store = ExpertStore.open(path)
    assert store.arch == arch and store.moe_layers == [0, 1] and store.num_experts == 4
    assert store.expert_nbytes == 3 * store.intermediate_size * 32 * 4
    for layer, expert in [(0, 0), (1, 3)]:
        assert_same(store.read(layer, expert), expected_expert(model, layer, expert))


def test_reads_fused_expert_tensors(checkpoints, tmp_path):
    """transformers 5's in-memory layout: gate_up_proj (E, 2I, D) and down_proj (E, D, I)."""
    model, path = checkpoints["qwen3_moe"]
    shutil.copy(path / "config.json", tmp_path / "config.json")
    state = {k: v.contiguous() for k, v in model.state_dict().items() if "lm_head" not in k}
    assert any(k.endswith("experts.gate_up_proj") for k in state)
    save_file(state, tmp_path / "model.safetensors")
    store = ExpertStore.open(tmp_path)
    for layer, expert in [(0, 1), (1, 2)]:
        assert_same(store.read(layer, expert), expected_expert(model, layer, expert))


def test_reads_a_sharded_bfloat16_checkpoint_through_its_index(checkpoints, tmp_path):
    model, path = checkpoints["mixtral"]
    shutil.copy(path / "config.json", tmp_path / "config.json")
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    shards = {"a.safetensors": {}, "b.safetensors": {}}
    for name, tensor in state.items():  # layer 0 in one shard, the rest in the other
        shards["a.safetensors" if "layers.0." in name else "b.safetensors"][name] = tensor
    for file, tensors in shards.items():
        save_file(tensors, tmp_path / file)
    weight_map = {name: file for file, tensors in shards.items() for name in tensors}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    store = ExpertStore.open(tmp_path)
    assert store.dtype == torch.bfloat16 and store.expert_nbytes == 3 * 24 * 32 * 2
    want = expected_expert(model, 1, 3)
    assert_same(store.read(1, 3), ExpertWeights(*(t.to(torch.bfloat16) for t in vars(want).values())))
    as_float = store.empty_buffers(pin_memory=False, dtype=torch.float32)  # converted on the way
    store.read_into(0, 2, as_float)
    assert torch.allclose(as_float.down, expected_expert(model, 0, 2).down, rtol=1e-2, atol=1e-3)


def test_qwen2_shared_expert_is_not_an_expert_to_cache(checkpoints):
    store = ExpertStore.open(checkpoints["qwen2_moe"][1])
    assert len(store.keys()) == 2 * 4  # routed experts only


def test_read_into_fills_preallocated_buffers(checkpoints):
    model, path = checkpoints["mixtral"]
    store = ExpertStore.open(path)
    buffers = store.empty_buffers(pin_memory=False)
    assert store.read_into(1, 2, buffers) == store.expert_nbytes
    assert_same(buffers, expected_expert(model, 1, 2))


def test_unknown_expert_names_the_valid_range(checkpoints):
    store = ExpertStore.open(checkpoints["olmoe"][1])
    with pytest.raises(KeyError, match=r"experts 0\.\.3"):
        store.read(0, 4)


def copy_checkpoint(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_folder_says_what_to_point_at(tmp_path):
    with pytest.raises(ExpertStoreError, match=r"config\.json not found"):
        ExpertStore.open(tmp_path / "nowhere")


def test_truncated_safetensors_is_named(checkpoints, tmp_path):
    path = copy_checkpoint(checkpoints["qwen3_moe"][1], tmp_path / "m")
    file = path / "model.safetensors"
    file.write_bytes(file.read_bytes()[:-1000])
    with pytest.raises(ExpertStoreError, match=r"model\.safetensors.*corrupt or truncated"):
        ExpertStore.open(path).read(1, 3)


def test_a_damaged_header_is_named(checkpoints, tmp_path):
    path = copy_checkpoint(checkpoints["olmoe"][1], tmp_path / "m")
    file = path / "model.safetensors"
    file.write_bytes(b"\xff" * 8 + file.read_bytes()[8:])
    with pytest.raises(ExpertStoreError, match=r"model\.safetensors cannot be read as safetensors"):
        ExpertStore.open(path)


def test_config_that_does_not_match_the_weights(checkpoints, tmp_path):
    path = copy_checkpoint(checkpoints["qwen3_moe"][1], tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    config["moe_intermediate_size"] = 99
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExpertStoreError, match="do not belong together"):
        ExpertStore.open(path)


def test_missing_expert_is_named(checkpoints, tmp_path):
    path = copy_checkpoint(checkpoints["qwen3_moe"][1], tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    config["num_local_experts"] = 5
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExpertStoreError, match=r"expert \(0, 4\) lacks"):
        ExpertStore.open(path)


def test_unsupported_architecture(checkpoints, tmp_path):
    path = copy_checkpoint(checkpoints["qwen3_moe"][1], tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    config["model_type"] = "llama"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExpertStoreError, match=r"'llama' is not supported.*mixtral"):
        ExpertStore.open(path)


# -- extract(): the per-layer contiguous layout ------------------------------------------------


@pytest.fixture(scope="module")
def extracted(checkpoints, tmp_path_factory):
    from lazymoe.engine.storage.extract import extract

    return extract(checkpoints["olmoe"][1], tmp_path_factory.mktemp("ext") / "olmoe")


def test_extracted_store_reads_bit_exact_experts(checkpoints, extracted):
    model, _ = checkpoints["olmoe"]
    store = ExpertStore.open(extracted)
    assert type(store).__name__ == "ExtractedStore" and store.moe_layers == [0, 1]
    for layer, expert in [(0, 0), (1, 3)]:
        assert_same(store.read(layer, expert), expected_expert(model, layer, expert))
    buffers = store.empty_buffers(pin_memory=False)
    assert store.read_into(1, 1, buffers) == store.expert_nbytes
    assert_same(buffers, expected_expert(model, 1, 1))


def test_extract_can_quantize_and_reads_back_dequantized(checkpoints, tmp_path):
    from lazymoe.engine.storage.extract import extract

    model, path = checkpoints["olmoe"]  # I = 24, D = 32: rows of 32 fit q8_0 only for gate/up
    with pytest.raises(ExpertStoreError, match=r"q8_0.*int8_row"):
        extract(path, tmp_path / "q8", fmt="q8_0")
    store = ExpertStore.open(extract(path, tmp_path / "i8", fmt="int8_row"))
    assert store.stored_nbytes < store.expert_nbytes / 3  # 8-bit + scales vs 32-bit
    got, want = store.read(1, 2), expected_expert(model, 1, 2)
    for name in ("gate", "up", "down"):
        w, g = getattr(want, name), getattr(got, name)
        assert g.dtype == torch.float32
        assert (w - g).abs().max() <= w.abs().max() / 127 + 1e-6, name  # within one int8 step


def broken_copy(extracted, tmp_path):
    dst = tmp_path / "ext"
    shutil.copytree(extracted, dst)
    return dst


def test_truncated_layer_file_is_named(extracted, tmp_path):
    path = broken_copy(extracted, tmp_path)
    file = path / "layer_001.experts"
    file.write_bytes(file.read_bytes()[:-10])
    with pytest.raises(ExpertStoreError, match=r"layer_001\.experts.*truncated"):
        ExpertStore.open(path)


def test_flipped_bytes_fail_the_checksum_on_read(extracted, tmp_path):
    path = broken_copy(extracted, tmp_path)
    file = path / "layer_000.experts"
    data = bytearray(file.read_bytes())
    data[-5] ^= 0xFF  # inside the last expert
    file.write_bytes(bytes(data))
    store = ExpertStore.open(path)
    store.read(0, 0)  # other experts are fine
    with pytest.raises(ExpertStoreError, match=r"layer_000\.experts: expert 3 fails its checksum"):
        store.read(0, 3)


def test_a_damaged_magic_is_not_a_lazymoe_file(extracted, tmp_path):
    path = broken_copy(extracted, tmp_path)
    file = path / "layer_000.experts"
    file.write_bytes(b"X" + file.read_bytes()[1:])
    with pytest.raises(ExpertStoreError, match="bad magic"):
        ExpertStore.open(path)


def test_a_manifest_that_disagrees_with_the_layer_files(extracted, tmp_path):
    path = broken_copy(extracted, tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format"] = "q8_0"  # wrong format
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExpertStoreError, match=r"holds format 'f32' but manifest\.json says 'q8_0'"):
        ExpertStore.open(path)
    manifest["format"] = "f32"
    manifest["config"]["hidden_size"] = 64  # wrong shape
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExpertStoreError, match="belongs to another model"):
        ExpertStore.open(path)


@pytest.mark.gpu
@requires_gpu
def test_read_into_pinned_buffers_then_the_gpu(checkpoints):
    model, path = checkpoints["qwen3_moe"]
    store = ExpertStore.open(path)
    pinned = store.empty_buffers()  # pinned by default when CUDA is there
    assert pinned.gate.is_pinned()
    store.read_into(1, 2, pinned)
    on_gpu = ExpertWeights(*(t.to("cuda", non_blocking=True) for t in vars(pinned).values()))
    direct = ExpertWeights(*(torch.empty_like(t, device="cuda") for t in vars(pinned).values()))
    store.read_into(1, 2, direct)  # a CUDA buffer is fine too (a synchronous copy)
    torch.cuda.synchronize()
    for got in (on_gpu, direct):
        assert_same(ExpertWeights(*(t.cpu() for t in vars(got).values())), expected_expert(model, 1, 2))


def test_the_bundled_model_reads_like_its_own_weights():
    from lazymoe.paths import bundled_model_dir

    path = bundled_model_dir()
    if not (path / "model.safetensors").exists():
        pytest.skip("the bundled model is not built yet: run `make data`")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    store = ExpertStore.open(path)
    assert store.moe_layers == list(range(model.config.num_hidden_layers))
    last = (store.moe_layers[-1], store.num_experts - 1)
    assert_same(store.read(*last), expected_expert(model, *last))


def test_views_are_the_experts_in_place(checkpoints):
    model, path = checkpoints["qwen3_moe"]
    store = ExpertStore.open(path)
    assert_same(store.views(1, 2), expected_expert(model, 1, 2))
    assert not store.pinned  # nothing is page-locked unless asked


def test_an_extracted_store_cannot_be_page_locked(extracted):
    with pytest.raises(ExpertStoreError, match="does not apply to experts extracted"):
        ExpertStore.open(extracted).pin_for_cuda()


@pytest.mark.gpu
@requires_gpu
def test_page_locked_checkpoint_copies_straight_to_the_gpu(checkpoints):
    model, path = checkpoints["qwen3_moe"]
    store = ExpertStore.open(path)
    assert store.pin_for_cuda() > 0 and store.pinned
    views = store.views(0, 3)
    assert views.gate.is_pinned()  # CUDA sees the mapping as page-locked memory
    on_gpu = ExpertWeights(*(t.to("cuda", non_blocking=True) for t in vars(views).values()))
    torch.cuda.synchronize()
    assert_same(ExpertWeights(*(t.cpu() for t in vars(on_gpu).values())), expected_expert(model, 0, 3))
    store.close()
    assert not store.pinned
    assert store.pin_for_cuda() > 0  # unlocked by close(): the new mapping locks again
    store.close()


def test_the_storage_modules_import_each_other_one_way():
    """extract -> store, never back, not even inside a function (no loop in all of
    lazymoe.engine: tests/test_engine_options.py)."""
    from import_graph import import_graph

    graph = import_graph()
    assert "lazymoe.engine.storage.store" in graph["lazymoe.engine.storage.extract"]
    assert "lazymoe.engine.storage.extract" not in graph["lazymoe.engine.storage.store"]
