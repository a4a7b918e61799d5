"""Per-row counter-based noise (kernels/noise.py): Philox4x32-10 against its published answers, the Triton
kernel (under TRITON_INTERPRET=1) against the numba loop, rows independent of their batch, and normal
statistics."""
import math
import os

import pytest
import torch

from kernels.noise import philox4x32, row_normal, seed_keys

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# Random123's known-answer vectors for philox4x32 with 10 rounds: (counter, key, output).
PHILOX_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,answer", PHILOX_ANSWERS)
def test_philox_gives_the_published_answers(counter, key, answer):
    assert philox4x32(counter, key) == answer


def _draw(seeds, draws, numel, **kw):
    return row_normal(seed_keys(seeds), torch.tensor(draws, dtype=torch.int64), numel, **kw)


def test_the_stream_is_the_box_muller_of_its_philox_blocks():
    """Element e of row b's draw n is normal e % 4 of the block (e // 4, n low, n high, 0) under the seed."""
    seed, n = 2 ** 40 + 11, 2 ** 33 + 5
    got = _draw([seed], [n], 10)[0]
    for g in range(3):
        words = philox4x32((g, n & 0xFFFFFFFF, n >> 32, 0), (seed & 0xFFFFFFFF, seed >> 32))
        u = [((w >> 9) + 0.5) * 2.0 ** -23 for w in words]
        want = []
        for a, b in ((u[0], u[1]), (u[2], u[3])):
            r = math.sqrt(-2 * math.log(a))
            want += [r * math.cos(2 * math.pi * b), r * math.sin(2 * math.pi * b)]
        for lane in range(4):
            if 4 * g + lane < 10:
                assert got[4 * g + lane].item() == pytest.approx(want[lane], abs=2e-5)


def test_a_row_does_not_depend_on_its_batch():
    seeds, draws = [3, 99, 2 ** 63 + 1, 3], [0, 4, 7, 1]
    batch = _draw(seeds, draws, 1000)
    for b, (seed, n) in enumerate(zip(seeds, draws)):
        assert torch.equal(batch[b], _draw([seed], [n], 1000)[0])
    assert not torch.equal(batch[0], batch[3])  # same seed, another draw
    assert not torch.equal(_draw([3], [0], 1000), _draw([4], [0], 1000))
    # a longer draw starts with the shorter one: the element index is the counter
    assert torch.equal(_draw([5], [2], 1001)[0, :999], _draw([5], [2], 999)[0])


def test_seeds_are_taken_modulo_two_to_the_64():
    assert torch.equal(_draw([-1], [0], 64), _draw([2 ** 64 - 1], [0], 64))
    with pytest.raises(TypeError, match="integer"):
        seed_keys([1.5])


def test_the_noise_is_standard_normal():
    x = _draw(list(range(8)), [0] * 8, 2 ** 17).double().flatten()  # 1M samples
    assert abs(x.mean().item()) < 0.005
    assert abs(x.std().item() - 1) < 0.005
    z = (x - x.mean()) / x.std()
    assert abs((z ** 3).mean().item()) < 0.02          # skew
    assert abs((z ** 4).mean().item() - 3) < 0.05      # kurtosis
    # every lane of the Philox block is normal: quantiles against the normal's (Kolmogorov distance)
    normal = torch.distributions.Normal(0.0, 1.0)
    for lane in range(4):
        s = x.view(-1, 4)[:, lane].sort().values
        cdf = normal.cdf(s)
        ecdf = torch.arange(1, len(s) + 1, dtype=torch.float64) / len(s)
        assert (cdf - ecdf).abs().max().item() < 0.005, lane
    # neighbours and rows are uncorrelated
    grid = x.view(8, -1)
    assert abs(torch.corrcoef(torch.stack([grid[:, :-1].flatten(), grid[:, 1:].flatten()]))[0, 1].item()) < 0.005
    assert torch.corrcoef(grid).fill_diagonal_(0).abs().max().item() < 0.02


def test_bad_arguments_are_named():
    keys, draws = seed_keys([1, 2]), torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match="keys"):
        row_normal(keys.int(), draws, 8)
    with pytest.raises(ValueError, match="draws"):
        row_normal(keys, draws[:1], 8)
    with pytest.raises(ValueError, match="backend"):
        row_normal(keys, draws, 8, backend="cuda")
    assert row_normal(keys, draws, 0).shape == (2, 0)


@pytest.mark.skipif(not INTERPRET, reason="the Triton kernel runs on CPU tensors only under TRITON_INTERPRET=1")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_the_triton_kernel_makes_the_numba_stream(dtype):
    from kernels.philox import BLOCK
    from kernels.philox import row_normal as triton_row_normal
    keys = seed_keys([0, 1, 2 ** 40 + 7, 2 ** 64 - 1])
    draws = torch.tensor([0, 5, 2 ** 33 + 1, 3])
    numel = 4 * BLOCK + 7  # two programs a row, the last one partly masked, a partial Philox block
    want = row_normal(keys, draws, numel, dtype)
    out = torch.full((4, numel + 1), float("nan"), dtype=dtype)  # poisoned, and one element past the end
    got = triton_row_normal(keys, draws, numel, dtype, out=out[:, :numel])
    assert got.data_ptr() == out.data_ptr()
    assert not got.isnan().any(), "an element was not written"
    assert out[:, numel].isnan().all(), "an element past the end was written"
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(got, want, atol=tol, rtol=0)
    assert torch.equal(row_normal(keys, draws, 8, backend="triton"), triton_row_normal(keys, draws, 8))
    assert torch.equal(keys, seed_keys([0, 1, 2 ** 40 + 7, 2 ** 64 - 1])) and draws[2] == 2 ** 33 + 1  # unchanged
