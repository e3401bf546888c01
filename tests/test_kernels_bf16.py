"""lazymoe.quant.kernels_bf16: BF16 weights times one token on the CPU (numba), the path a decode
step's BF16 experts take on the CPU (ExpertCompute._cpu_from_views)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from lazymoe.engine.compute.expert_compute import ExpertCompute, expert_split
from lazymoe.engine.storage.weights import ExpertWeights
from lazymoe.quant import kernels_bf16


def bf16(*shape, seed=0):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.05).to(torch.bfloat16)


def test_the_products_of_torchs_float32_matmul_on_the_same_bits():
    weights = [bf16(48, 96, seed=i) for i in range(3)]
    x = bf16(1, 96, seed=9)
    got = kernels_bf16.matvec_many(x, weights)
    want = torch.stack([F.linear(x.float(), w.float())[0] for w in weights])
    assert got.dtype == torch.float32 and got.shape == (3, 48)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_one_input_per_matrix_and_any_thread_count_give_the_same_bits():
    weights = [bf16(40, 64, seed=i) for i in range(4)]
    xs = bf16(4, 64, seed=7)
    one = kernels_bf16.matvec_many(xs, weights, threads=1)
    two = kernels_bf16.matvec_many(xs, weights, threads=2)
    assert torch.equal(one, two)  # a row's sum is one thread's, in one order
    for i, w in enumerate(weights):
        torch.testing.assert_close(one[i], F.linear(xs[i : i + 1].float(), w.float())[0], rtol=1e-5, atol=1e-6)


def test_rows_with_a_stride_read_in_place():
    """A view whose rows are not packed (a slice of a wider matrix) is read where it lies, in
    one call with packed ones, in either order."""
    wide = bf16(32, 80)
    view, packed = wide[:, 8:72], bf16(32, 64, seed=5)
    x = bf16(1, 64, seed=3)
    for weights in ([view, packed], [packed, view]):
        got = kernels_bf16.matvec_many(x, weights)
        for i, w in enumerate(weights):
            torch.testing.assert_close(got[i], F.linear(x.float(), w.float())[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", ["float32", "shape", "x", "int-x", "none"])
def test_what_it_cannot_take_is_named(bad):
    weights, x = [bf16(8, 16), bf16(8, 16)], bf16(1, 16)
    if bad == "float32":
        weights[1] = weights[1].float()
    elif bad == "shape":
        weights[1] = bf16(8, 32)
    elif bad == "x":
        x = bf16(3, 16)
    elif bad == "int-x":
        x = torch.ones(1, 16, dtype=torch.int64)
    else:
        weights = []
    with pytest.raises(ValueError, match=r"weight|x must be"):
        kernels_bf16.matvec_many(x, weights)


def compute_over(store) -> ExpertCompute:
    """An ExpertCompute whose CPU experts come from `store.views` (what _compute_cpu uses with
    no RAM tier)."""
    link = SimpleNamespace(add=lambda *a, **k: None)
    compute = ExpertCompute()
    compute.tiers = SimpleNamespace(store=store, links={"disk->cpu": link}, ram=None)
    compute.act = F.silu
    compute.cost_model = None  # no measurement: BF16 takes the numba kernel
    compute.cpu_reads_stored = False  # a float checkpoint
    return compute


def test_a_decode_steps_bf16_experts_take_the_kernel_and_match_torch():
    experts = {e: ExpertWeights(bf16(24, 32, seed=e), bf16(24, 32, seed=e + 10), bf16(32, 24, seed=e + 20))
               for e in (2, 5, 7)}  # fmt: skip
    compute = compute_over(SimpleNamespace(views=lambda layer, e: experts[e]))
    hidden, weights = bf16(1, 32, seed=1), torch.tensor([[0.5, 0.3, 0.2]]).to(torch.bfloat16)
    rows = {2: [(0, 1)], 5: [(0, 0)], 7: [(0, 2)]}
    got = torch.zeros_like(hidden)
    compute._cpu_from_views(got, 0, hidden, weights, rows, [2, 5, 7])
    want = torch.zeros(1, 32)
    for e in (2, 5, 7):
        w = ExpertWeights(*(p.float() for p in vars(experts[e]).values()))
        want += weights[0, rows[e][0][1]].float() * expert_split(hidden.float(), w, F.silu)
    torch.testing.assert_close(got.float(), want, rtol=0.02, atol=2e-3)  # bf16 rounding of the adds
    # the same bits as adding each expert's weighted output in turn (ExpertCompute._add_rows)
    ys, per_expert = kernels_bf16.experts_forward(hidden, [experts[e] for e in (2, 5, 7)], F.silu), torch.zeros_like(hidden)
    for e, y in zip((2, 5, 7), ys, strict=True):
        compute._add_rows(per_expert, hidden, weights, rows[e], lambda x, y=y: y[None])
    assert torch.equal(got, per_expert)
    # float32 experts keep torch's path: exactly expert_split's numbers
    experts32 = {e: ExpertWeights(*(p.float() for p in vars(w).values())) for e, w in experts.items()}
    compute32 = compute_over(SimpleNamespace(views=lambda layer, e: experts32[e]))
    got32 = torch.zeros(1, 32)
    compute32._cpu_from_views(got32, 0, hidden.float(), weights.float(), rows, [2, 5, 7])
    want32 = torch.zeros(1, 32)
    for e in (2, 5, 7):
        want32.index_add_(0, torch.tensor([0]),
                          expert_split(hidden.float(), experts32[e], F.silu) * weights.float()[0, rows[e][0][1]])  # fmt: skip
    assert torch.equal(got32, want32)


def test_bf16_experts_take_torch_where_the_cost_model_measured_it_faster(monkeypatch):
    """On a machine where torch's BF16 matmul read faster (CostModel.cpu_float_kernel "torch"),
    a decode step's BF16 experts skip the numba kernel and get torch's own numbers."""
    from lazymoe.engine.compute.placement import CostModel

    experts = {e: ExpertWeights(bf16(24, 32, seed=e), bf16(24, 32, seed=e + 10), bf16(32, 24, seed=e + 20))
               for e in (1, 4)}  # fmt: skip
    hidden, weights = bf16(1, 32, seed=3), torch.tensor([[0.6, 0.4]]).to(torch.bfloat16)
    rows = {1: [(0, 0)], 4: [(0, 1)]}
    compute = compute_over(SimpleNamespace(views=lambda layer, e: experts[e]))
    compute.cost_model = CostModel(55, 90, 1e6, cpu_float_gbps=30, cpu_float_kernel="torch")

    def refuse(*args):
        raise AssertionError("the numba kernel ran where torch measured faster")

    monkeypatch.setattr(kernels_bf16, "experts_forward", refuse)
    got = torch.zeros_like(hidden)
    compute._cpu_from_views(got, 0, hidden, weights, rows, [1, 4])
    want = torch.zeros_like(hidden)
    for e in (1, 4):
        want.index_add_(0, torch.tensor([0]), expert_split(hidden, experts[e], F.silu) * weights[0, rows[e][0][1]])
    assert torch.equal(got, want)
