"""Int8 activations (lazymoe.quant.int8_activations, kernels_int8): x rounded to int8 blocks as
llama.cpp rounds it, then integer block dot products. Checked against numpy re-implementations
of llama.cpp's reference C code, an exact int64 reference, and the float path within the error
the rounding of x allows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lazymoe import quant
from lazymoe.quant import kernels_cpu, kernels_int8
from lazymoe.quant.expert import expert_forward, expert_forward_reference
from lazymoe.quant.int8_activations import quantize_activations


def tricky_x(tokens: int, cols: int, seed: int) -> torch.Tensor:
    """Random rows with an all-zero block, a block of huge values, one of tiny values, and a
    block whose values sit exactly half-way between two int8 steps (the rounding rule shows)."""
    x = torch.randn(tokens, cols, generator=torch.Generator().manual_seed(seed))
    x[0, :32] = 0
    if cols >= 768:
        x[0, 512:768] = 0  # a whole q8_K super-block of zeros
    x[-1, 32:64] *= 1e30
    x[-1, 64:96] *= 1e-30
    if cols >= 512:  # block 3 and super-block 1: max |x| 127 (step 1), halves at 2.5, -3.5
        x[0, 96:128] = torch.tensor([127.0, 2.5, -3.5, 0.5] * 8)
        x[0, 256:512] = torch.tensor([-127.0, 2.5, -3.5, 0.5] * 64)
    return x


def llama_q8_0(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """quantize_row_q8_0_ref in numpy: d = amax / 127, q = roundf(x * (1 / d))."""
    b = x.reshape(x.shape[0], -1, 32).astype(np.float32)
    d = np.abs(b).max(axis=2) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    v = (b * inv[..., None]).astype(np.float32).astype(np.float64)
    q = np.sign(v) * np.floor(np.abs(v) + 0.5)  # C's roundf: halves away from zero
    return q.astype(np.int8).reshape(x.shape), d.astype(np.float32)


def llama_q8_k(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """quantize_row_q8_K_ref in numpy: scale = -127 / (value of largest |x|), q = min(127,
    nearest_int(scale * x)) (halves to even), d = 1 / scale; zero blocks: d = 0, q = 0."""
    b = x.reshape(x.shape[0], -1, 256).astype(np.float32)
    vmax = np.take_along_axis(b, np.abs(b).argmax(axis=2)[..., None], axis=2)[..., 0]
    with np.errstate(divide="ignore"):
        iscale = np.where(vmax != 0, np.float32(-127) / vmax, np.float32(0)).astype(np.float32)
        d = np.where(vmax != 0, np.float32(1) / iscale, np.float32(0)).astype(np.float32)
    q = np.minimum(127, np.rint((b * iscale[..., None]).astype(np.float32)))
    return q.astype(np.int8).reshape(x.shape), d


@pytest.mark.parametrize("tokens", [1, 3])
def test_q8_0_activations_match_llama_cpp(tokens):
    x = tricky_x(tokens, 512, seed=tokens)
    q, d = quantize_activations(x, "q8_0")
    want_q, want_d = llama_q8_0(x.numpy())
    np.testing.assert_array_equal(q, want_q)
    np.testing.assert_array_equal(d, want_d)
    assert (q[0, :32] == 0).all() and d[0, 0] == 0  # all zeros stay zeros, no NaN
    assert list(q[0, 96:100]) == [127, 3, -4, 1]  # roundf: 2.5 -> 3, -3.5 -> -4, 0.5 -> 1


@pytest.mark.parametrize("tokens", [1, 3])
def test_q8_k_activations_match_llama_cpp(tokens):
    x = tricky_x(tokens, 768, seed=10 + tokens)
    q, d, sums = quantize_activations(x, "q8_k")
    want_q, want_d = llama_q8_k(x.numpy())
    np.testing.assert_array_equal(q, want_q)
    np.testing.assert_array_equal(d, want_d)
    np.testing.assert_array_equal(sums, q.reshape(tokens, -1, 32).astype(np.int64).sum(axis=2))
    assert d[0, 2] == 0 and (q[0, 512:768] == 0).all()
    assert list(q[0, 256:260]) == [-127, 2, -4, 0]  # scale -127 / -127 = 1: halves to even


def test_activation_kind_is_checked():
    with pytest.raises(ValueError, match="'q8_0' or 'q8_k'"):
        quantize_activations(torch.randn(1, 256), "q4_0")
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize_activations(torch.randn(1, 96), "q8_k")


def block_integers(qt: quant.QuantizedTensor) -> tuple[np.ndarray, np.ndarray]:
    """A q8_0 or q4_0 weight's integers (rows, blocks, 32) int64 and scales (rows, blocks)."""
    rows, cols = qt.shape
    size = 34 if qt.fmt.kind == "q8_0" else 18
    blocks = qt.data.numpy().reshape(rows, cols // 32, size)
    d = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float64)
    if qt.fmt.kind == "q8_0":
        return blocks[..., 2:].view(np.int8).astype(np.int64), d
    p = blocks[..., 2:].astype(np.int64)
    return np.concatenate([p & 15, p >> 4], axis=2) - 8, d


def weight(fmt: str, shape: tuple[int, int], seed: int) -> quant.QuantizedTensor:
    return quant.quantize(torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.05, fmt)


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0"])
@pytest.mark.parametrize("shape", [(32, 512), (7, 96), (37, 256)])  # 96: an odd number of blocks
@pytest.mark.parametrize("tokens", [1, 3])
def test_block_dot_products_equal_the_integer_reference(fmt, shape, tokens):
    qt = weight(fmt, shape, seed=shape[0] + tokens)
    x = tricky_x(tokens, shape[1], seed=tokens)
    got = kernels_int8.qmatvec_int8(x, qt).double().numpy()
    xq, xd = quantize_activations(x, "q8_0")
    wq, wd = block_integers(qt)
    isum = np.einsum("rbj,tbj->trb", wq, xq.reshape(tokens, -1, 32).astype(np.int64))  # exact
    want = (isum * wd[None] * xd.astype(np.float64)[:, None, :]).sum(axis=2)
    scale = (np.abs(isum) * np.abs(wd)[None] * np.abs(xd.astype(np.float64))[:, None, :]).sum(axis=2)
    # the integer sums are exact; each block's term is rounded to float32 a few times (scale,
    # product, add) and the blocks and 32 lanes add up in float32: at most about (blocks + 40)
    # ulps (2**-24) of the sum of magnitudes. A wrong nibble or scale is off by ~1e-2 of it.
    bound = 2.0**-24 * (shape[1] // 32 + 40) * scale
    assert (np.abs(got - want) <= bound + 1e-300).all()


@pytest.mark.parametrize("fmt", ["q4_k", "q6_k"])
@pytest.mark.parametrize("shape", [(32, 256), (5, 768)])  # 768: an odd number of super-blocks
@pytest.mark.parametrize("tokens", [1, 3])
def test_k_quant_dot_products_equal_the_exact_product(fmt, shape, tokens):
    """The exact product of the dequantized weights and the dequantized int8 activations."""
    qt = weight(fmt, shape, seed=shape[0] + tokens)
    x = tricky_x(tokens, shape[1], seed=tokens)
    got = kernels_int8.qmatvec_int8(x, qt).double()
    xq, xd, _ = quantize_activations(x, "q8_k")
    xhat = torch.from_numpy((xq.reshape(tokens, -1, 256) * xd[..., None].astype(np.float64)).reshape(tokens, -1))
    w = qt.dequantize().double()  # float32 values: d * sc and dmin * m rounded as the kernel does
    scale = xhat.abs() @ w.abs().T  # float32 rounding, as in the test above, per super-block
    assert ((got - xhat @ w.T).abs() <= 2.0**-24 * (shape[1] // 32 + 40) * scale + 1e-300).all()


@pytest.mark.parametrize("fmt", kernels_int8.KINDS)
@pytest.mark.parametrize("tokens", [1, 4])
def test_close_to_the_float_path_within_the_activation_rounding(fmt, tokens):
    """int8 - float = sum_j w_j (xhat_j - x_j), and |xhat_j - x_j| <= step / 2 of x_j's block
    (step = largest |x| of the block / 127), so |difference| <= sum_j |w_j| step_j / 2, plus
    the float32 rounding of the two sums (1e-5 of sum |w| |x| is generous for 768 terms)."""
    cols = 768
    qt = weight(fmt, (48, cols), seed=7)
    x = torch.randn(tokens, cols, generator=torch.Generator().manual_seed(8))
    group = 32 if kernels_int8.activation_kind(qt) == "q8_0" else 256
    steps = (x.reshape(tokens, -1, group).abs().amax(dim=2) / 127).repeat_interleave(group, dim=1)
    w = qt.dequantize().double()
    bound = 0.5 * steps.double() @ w.abs().T + 1e-5 * x.double().abs() @ w.abs().T
    diff = (kernels_int8.qmatvec_int8(x, qt).double() - kernels_cpu.qmatvec(x, qt).double()).abs()
    assert (diff <= bound).all()
    assert diff.max() > 0  # the activations really were rounded


@pytest.mark.parametrize("fmt", kernels_int8.KINDS)
def test_threads_change_nothing(fmt):
    qt = weight(fmt, (53, 512), seed=3)
    x = torch.randn(2, 512)
    assert torch.equal(kernels_int8.qmatvec_int8(x, qt, threads=1), kernels_int8.qmatvec_int8(x, qt, threads=2))


@pytest.mark.parametrize("fmt", kernels_int8.KINDS)
@pytest.mark.parametrize("tokens", [1, 3])
def test_expert_forward_with_int8_activations(fmt, tokens):
    gen = torch.Generator().manual_seed(5)
    shapes = ((512, 256), (512, 256), (256, 512))  # gate, up (I, D), down (D, I)
    gate, up, down = (quant.quantize(torch.randn(s, generator=gen) * 0.05, fmt) for s in shapes)
    x = torch.randn(tokens, 256, generator=gen)
    want = expert_forward_reference(x, gate, up, down, F.silu)
    got = expert_forward(x, gate, up, down, F.silu, activations="int8")
    assert not torch.equal(got, expert_forward(x, gate, up, down, F.silu))  # not the float path
    # two roundings of about 1/254 of a block's largest value each: a few % of the output's size
    assert (got - want).norm() <= 0.05 * want.norm()


def test_refusals_name_the_problem():
    with pytest.raises(quant.QuantError, match="no int8-activation CPU kernel"):
        kernels_int8.qmatvec_int8(torch.randn(1, 64), weight("q4_1", (4, 64), seed=0))
    with pytest.raises(quant.QuantError, match=r"x must be \(tokens, 256\)"):
        kernels_int8.qmatvec_int8(torch.randn(1, 128), weight("q8_0", (4, 256), seed=0))
    gate = weight("q8_0", (64, 32), seed=1)
    with pytest.raises(quant.QuantError, match="activations must be 'float' or 'int8'"):
        expert_forward(torch.randn(1, 32), gate, gate, weight("q8_0", (32, 64), seed=2), activations="int4")


def test_token_agreement_script_runs(tmp_path):
    """scripts/int8_agreement.py (the figure in lazymoe/quant/expert.py) runs end to end."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).parents[1] / "scripts" / "int8_agreement.py"
    spec = importlib.util.spec_from_file_location("int8_agreement", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "agreement.json"
    assert module.main(["--tokens", "2", "--formats", "q4_0", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == len(module.PROMPTS) and all(0 <= r["same_prefix"] <= 2 for r in rows)


def test_the_vpmaddwd_and_vnni_block_sums_agree(tmp_path):
    """The block sums are built by vpdpbusd where the CPU has VNNI, by vpmaddwd elsewhere
    (simd_int8.has_vnni, decided when numba compiles). On a VNNI CPU this process runs the
    first; a fresh one, compiled into its own cache with has_vnni off, runs the second: the
    integer sums are exact both ways, so the outputs differ only by float32 rounding of the
    lanes' order. (Elsewhere only the second can be compiled, and the exact-reference tests
    above check it.)"""
    import os
    import subprocess
    import sys

    from numba.core.registry import cpu_target

    from lazymoe.quant import simd_int8

    if not simd_int8.has_vnni(cpu_target.target_context):  # LLVM cannot emit vpdpbusd for it
        pytest.skip("this CPU has no VNNI: only the vpmaddwd build runs here")
    other = False  # the vpmaddwd build, next to this process's VNNI one
    script = (
        "import sys, numpy as np, torch\n"
        "from lazymoe.quant import simd_int8\n"
        f"simd_int8.has_vnni = lambda context: {other}\n"
        "from lazymoe import quant\n"
        "from lazymoe.quant import kernels_int8\n"
        "x = torch.randn(2, 512, generator=torch.Generator().manual_seed(9))\n"
        "for fmt in kernels_int8.KINDS:\n"
        "    w = torch.randn(24, 512, generator=torch.Generator().manual_seed(8)) * 0.05\n"
        "    y = kernels_int8.qmatvec_int8(x, quant.quantize(w, fmt), threads=1)\n"
        "    np.save(sys.argv[1] + '/' + fmt + '.npy', y.numpy())\n"
        "asm = ''.join(kernels_int8._rows_q4_0.inspect_asm().values())\n"
        "print('vpdpbusd' in asm)\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.stdout.split()[-1] == str(other)  # it really compiled the other way
    x = torch.randn(2, 512, generator=torch.Generator().manual_seed(9))
    for fmt in kernels_int8.KINDS:
        w = torch.randn(24, 512, generator=torch.Generator().manual_seed(8)) * 0.05
        mine = kernels_int8.qmatvec_int8(x, quant.quantize(w, fmt), threads=1).numpy()
        theirs = np.load(tmp_path / f"{fmt}.npy")
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-5 * np.abs(mine).max())
