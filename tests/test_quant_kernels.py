"""The fused CPU kernels (lazymoe.quant.kernels_cpu) compute x @ W^T from the stored blocks: equal
to dequantize-then-multiply in float64, for every format, shape and token count they serve."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lazymoe import quant
from lazymoe.quant import kernels_cpu
from lazymoe.quant.expert import expert_forward, expert_forward_reference

# rows: a multiple of the thread chunk (ROW_CHUNK = 16), one short of it, fewer than one chunk;
# cols: one super-block (K-quants) or several blocks, and a K-quant row of three super-blocks
SHAPES = [(32, 256), (37, 512), (5, 768)]


def random_weight(fmt: str, shape: tuple[int, int], seed: int) -> quant.QuantizedTensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen) * 0.05
    w[0, :64] *= 1e-3  # some blocks with tiny scales: float16 subnormals must decode exactly
    return quant.quantize(w, fmt)


@pytest.mark.parametrize("fmt", kernels_cpu.KINDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tokens", [1, 3, 8])
def test_kernel_equals_dequantized_matmul_in_float64(fmt, shape, tokens):
    qt = random_weight(fmt, shape, seed=shape[0] + tokens)
    x = torch.randn(tokens, shape[1], generator=torch.Generator().manual_seed(1))
    got = kernels_cpu.qmatvec(x, qt)
    assert got.dtype == torch.float32 and got.shape == (tokens, shape[0])
    want = x.double() @ qt.dequantize().double().T
    # float32 sums of `cols` products, in another order than float64's: each product is exact to
    # half an ulp (2**-24 relative) and the sum of n of them drifts by at most ~n ulps of the
    # largest partial sum (|x| |w| summed). A wrong nibble, scale or offset changes a sum by
    # about |w| |x| ~ 0.05 * 1, far above this bound.
    bound = 2.0**-24 * shape[1] * (x.double().abs() @ qt.dequantize().double().abs().T)
    assert ((got.double() - want).abs() <= bound + 1e-30).all(), (got.double() - want).abs().max()


@pytest.mark.parametrize("fmt", ["q8_0", "q4_k"])
def test_threads_change_nothing(fmt):
    """Rows are split among threads, never the sum of one row: 1 and 2 threads agree bit for bit."""
    qt = random_weight(fmt, (53, 512), seed=3)
    x = torch.randn(2, 512)
    assert torch.equal(kernels_cpu.qmatvec(x, qt, threads=1), kernels_cpu.qmatvec(x, qt, threads=2))


def test_work_units_are_few_large_and_a_multiple_of_the_threads():
    """numba gives each thread an equal run of units up front: a count that the threads divide
    keeps them equally busy. At least ITEMS_PER_THREAD units a thread, ROW_CHUNK rows a unit: 16
    gate/up matrices of 768 rows on 16 threads take 64 units of 192 rows, not 768 of 16."""
    import math

    assert kernels_cpu.row_chunk(16, 768, 16) == 192
    assert kernels_cpu.row_chunk(1, 768, 16) == kernels_cpu.ROW_CHUNK  # few rows: the floor
    assert kernels_cpu.row_chunk(1, 37, 0) == kernels_cpu.ROW_CHUNK  # (no threads: one)
    for threads in (2, 8, 12, 16, 32):
        for n in range(1, 17):  # a layer's CPU experts: gate and up (2n), down (n), one at a time
            for rows in (768, 2048, 1408):
                chunk = kernels_cpu.row_chunk(n, rows, threads)
                units = n * math.ceil(rows / chunk)
                if chunk > kernels_cpu.ROW_CHUNK:  # (at the floor: as many as ROW_CHUNK gives)
                    assert units % threads == 0 and units >= kernels_cpu.ITEMS_PER_THREAD * threads


@pytest.mark.parametrize("chunk", [1, 16, 37, 10_000])
def test_the_size_of_the_work_units_changes_no_bit(monkeypatch, chunk):
    """Each row is one unit's whole job, so any split of the rows gives the same bits, in the
    float, int8 and BF16 drivers alike."""
    from lazymoe.quant import kernels_bf16, kernels_int8

    qts = [random_weight("q4_0", (37, 512), seed=s) for s in range(3)]
    base = torch.cat([q.data.reshape(-1) for q in qts])
    qts = [quant.QuantizedTensor(q.format, q.shape, base[i * q.nbytes : (i + 1) * q.nbytes].view(q.data.shape))
           for i, q in enumerate(qts)]  # fmt: skip
    mats = [torch.randn(37, 512).to(torch.bfloat16) for _ in range(3)]
    x = torch.randn(1, 2, 512)

    def run():
        return (kernels_cpu.qmatvec_many(x, qts, base, threads=2),
                kernels_int8.qmatvec_int8_many(x, qts, base, threads=2),
                kernels_bf16.matvec_many(x[0, :1], mats, threads=2))  # fmt: skip

    before = run()
    for module in (kernels_cpu, kernels_int8, kernels_bf16):
        monkeypatch.setattr(module, "row_chunk", lambda n, rows, threads: chunk)
    for want, got in zip(before, run(), strict=True):
        assert torch.equal(want, got)


def test_kernel_reads_views_into_a_bigger_buffer():
    """The quantized pool hands out views into one slot buffer (gate | up | down)."""
    qt = random_weight("q4_0", (16, 256), seed=4)
    slot = torch.zeros(3 * qt.nbytes, dtype=torch.uint8)
    view = slot[qt.nbytes : 2 * qt.nbytes].view(qt.data.shape)
    view.copy_(qt.data)
    x = torch.randn(1, 256)
    inside = quant.QuantizedTensor(qt.format, qt.shape, view)
    assert torch.equal(kernels_cpu.qmatvec(x, inside), kernels_cpu.qmatvec(x, qt))


@pytest.mark.parametrize("fmt", kernels_cpu.KINDS)
@pytest.mark.parametrize("tokens", [1, 4])
def test_expert_forward_with_kernels_equals_reference(fmt, tokens):
    gen = torch.Generator().manual_seed(5)
    shapes = ((512, 256), (512, 256), (256, 512))  # gate, up (I, D), down (D, I)
    gate, up, down = (quant.quantize(torch.randn(s, generator=gen) * 0.05, fmt) for s in shapes)
    x = torch.randn(tokens, 256, generator=gen)
    got = expert_forward(x, gate, up, down, F.silu)
    torch.testing.assert_close(got, expert_forward_reference(x, gate, up, down, F.silu), rtol=1e-5, atol=1e-6)
    slab = expert_forward(x, gate, up, down, F.silu, kernels=False)
    torch.testing.assert_close(got, slab, rtol=1e-5, atol=1e-6)


def test_refusals_name_the_problem():
    with pytest.raises(quant.QuantError, match="no CPU kernel"):
        kernels_cpu.qmatvec(torch.randn(1, 64), quant.quantize(torch.randn(4, 64), "int8_row"))
    with pytest.raises(quant.QuantError, match=r"x must be \(tokens, 256\)"):
        kernels_cpu.qmatvec(torch.randn(1, 128), random_weight("q8_0", (4, 256), seed=0))
