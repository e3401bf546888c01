"""lab05b's checks: right answers pass; each typical mistake gets its own message."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lazymoe.engine.storage.store import ExpertStore
from lazymoe.exercises.lab05b import (
    REAL_CONFIGS,
    bundled_config,
    check_expert_nbytes,
    check_read_expert,
    read_header,
    reference_expert_nbytes,
)
from lazymoe.paths import bundled_model_dir

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


# -- exercise 1: bytes per expert --------------------------------------------------------------
def nbytes_right(config):
    i, d = config["moe_intermediate_size"], config["hidden_size"]
    return 3 * i * d * BYTES[config["dtype"]]


def test_reference_formula_agrees_with_the_store_on_the_bundled_model():
    assert (
        reference_expert_nbytes(bundled_config())
        == ExpertStore.open(bundled_model_dir()).expert_nbytes
    )


def test_reference_formula_on_qwen3_30b_matches_the_catalog_parameter_count():
    # catalog: 4.72M parameters per expert, BF16
    assert reference_expert_nbytes(REAL_CONFIGS["Qwen3-30B-A3B"]) == 3 * 768 * 2048 * 2


def test_right_expert_nbytes_passes():
    result = check_expert_nbytes(nbytes_right)
    assert result.passed, str(result)


def test_float_answer_with_the_right_value_passes():
    assert check_expert_nbytes(lambda c: float(nbytes_right(c))).passed


def test_starter_returning_none_is_not_started():
    result = check_expert_nbytes(lambda c: None)
    assert not result.passed and "returned None" in result.message


@pytest.mark.parametrize(
    "wrong, words",
    [
        (lambda c: nbytes_right(c) * 2 // 3, "two matrices"),
        (lambda c: nbytes_right(c) // 3, "one matrix"),
        (lambda c: nbytes_right(c) * 8, "bits"),
        (lambda c: 3 * c["moe_intermediate_size"] * c["hidden_size"], "elements, not bytes"),
        (lambda c: 3 * c["hidden_size"] ** 2 * BYTES[c["dtype"]], "hidden_size for both"),
        (
            lambda c: 3 * c["intermediate_size"] * c["hidden_size"] * BYTES[c["dtype"]],
            "moe_intermediate_size",
        ),
    ],
    ids=["two-matrices", "one-matrix", "bits", "elements", "hidden-twice", "dense-intermediate"],
)
def test_typical_mistakes_get_their_message(wrong, words):
    result = check_expert_nbytes(wrong)
    assert not result.passed
    assert words in result.message, str(result)


def test_hidden_twice_is_caught_although_the_bundled_model_has_i_equal_d():
    config = bundled_config()
    assert (
        config["hidden_size"] == config["moe_intermediate_size"]
    )  # why the real configs are needed
    result = check_expert_nbytes(lambda c: 3 * c["hidden_size"] ** 2 * BYTES[c["dtype"]])
    assert "Qwen3-30B-A3B" in result.message


def test_an_unexplained_answer_gives_the_ratio_and_the_formula():
    result = check_expert_nbytes(lambda c: nbytes_right(c) + 1)
    assert not result.passed and "x)" in result.message
    assert any("gate (I x D)" in d for d in result.details)


def test_a_function_that_raises_is_reported_not_raised():
    result = check_expert_nbytes(lambda c: c["num_experts_missing"])
    assert not result.passed and "KeyError" in result.message


def test_a_non_number_is_reported():
    result = check_expert_nbytes(lambda c: "lots")
    assert not result.passed and "number of bytes" in result.message


# -- exercise 2: read one expert by its byte ranges ----------------------------------------------
def make_reader(
    shift=0,
    swap_up_gate=False,
    dtype=np.float32,
    roles=("gate", "up", "down"),
    layer_offset=0,
    cast=None,
):
    """A learner's read_expert, right by default; the arguments put in one mistake each."""

    def read_expert(path, header, layer, expert):
        with open(path, "rb") as f:
            data_start = 8 + int.from_bytes(f.read(8), "little")
            out = []
            for role in roles:
                info = header[
                    f"model.layers.{layer + layer_offset}.mlp.experts.{expert}.{role}_proj.weight"
                ]
                start, end = info["data_offsets"]
                f.seek(data_start + start - shift)
                arr = np.frombuffer(f.read(end - start), dtype=dtype)
                arr = arr.reshape(info["shape"])
                out.append(arr.astype(cast) if cast else arr)
        if swap_up_gate:
            out[0], out[1] = out[1], out[0]
        return tuple(out)

    return read_expert


def test_right_reader_passes():
    result = check_read_expert(make_reader())
    assert result.passed, str(result)


def test_torch_tensors_and_a_dict_are_accepted():
    def as_dict(path, header, layer, expert):
        gate, up, down = make_reader()(path, header, layer, expert)
        return {"gate": torch.from_numpy(gate.copy()), "up": up, "down": down}

    assert check_read_expert(as_dict).passed


def test_reader_starter_returning_none_is_not_started():
    assert "returned None" in check_read_expert(lambda *a: None).message
    assert "returned None" in check_read_expert(lambda *a: (None, None, None)).message


def test_offsets_from_the_start_of_the_file_are_explained():
    _, data_start = read_header(bundled_model_dir() / "model.safetensors")
    result = check_read_expert(make_reader(shift=data_start))
    assert not result.passed
    assert "gate" in result.message and "8 + header length" in result.message, str(result)


def test_forgetting_the_length_field_is_explained():
    result = check_read_expert(make_reader(shift=8))
    assert not result.passed and "8-byte length field" in result.message, str(result)


def test_forgetting_the_header_is_explained():
    _, data_start = read_header(bundled_model_dir() / "model.safetensors")
    result = check_read_expert(make_reader(shift=data_start - 8))
    assert not result.passed and "forgot the header" in result.message, str(result)


def test_swapped_matrices_are_named():
    result = check_read_expert(make_reader(swap_up_gate=True))
    assert (
        not result.passed and "gate" in result.message and "holds the up matrix" in result.message
    )


def test_another_tensor_is_named():
    result = check_read_expert(make_reader(layer_offset=1))
    assert not result.passed and "model.layers.1.mlp.experts.0.gate_proj.weight" in result.message


def test_a_transposed_matrix_is_wrong_bytes():
    # the bundled experts are square (128 x 128): a transpose keeps the shape, changes the bytes
    def transposed(path, header, layer, expert):
        gate, up, down = make_reader()(path, header, layer, expert)
        return gate.T, up, down

    result = check_read_expert(transposed)
    assert not result.passed and "appear nowhere in the file" in result.message


def test_a_flat_array_is_told_to_reshape():
    def flat(path, header, layer, expert):
        return tuple(a.ravel() for a in make_reader()(path, header, layer, expert))

    result = check_read_expert(flat)
    assert not result.passed and "reshape to the header's shape" in result.message


def test_a_returned_dtype_other_than_the_header_is_explained():
    result = check_read_expert(make_reader(cast=np.float64))
    assert not result.passed and "dtype" in result.message and "F32" in result.message


@pytest.mark.parametrize("dtype", [np.float64, np.float16], ids=["frombuffer-default", "half"])
def test_frombuffer_with_the_wrong_dtype_is_explained(dtype):
    result = check_read_expert(make_reader(dtype=dtype))
    assert not result.passed and "dtype=np.float32" in result.message, str(result)


def test_a_short_read_is_explained():
    def short(path, header, layer, expert):
        info = header[f"model.layers.{layer}.mlp.experts.{expert}.gate_proj.weight"]
        arr = np.zeros(10, dtype=np.float32)
        return arr.reshape(info["shape"]), arr, arr

    result = check_read_expert(short)
    assert not result.passed and "data_offsets[1] - data_offsets[0]" in result.message


def test_returning_something_else_is_explained():
    result = check_read_expert(lambda *a: np.zeros(3))
    assert not result.passed and "three arrays" in result.message
