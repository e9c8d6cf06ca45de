"""pytest tests/test_patches.py -- patch sampling (ColonyBank) and batched augmentation."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from ipb.config import AugmentConfig
from ipb.data.augment import Augment, Chain, _blur, _gauss_taps, _rotate, make_augment
from ipb.models.common import centre_half as center_half
from ipb.data.patches import ColonyBank, png_shape, prepare_colony, prepared_shape
from ipb.data.table import decode_colony, encode_png


def ellipse(h, w, fy=0.4, fx=0.4, cy=None, cx=None):
    yy, xx = np.mgrid[:h, :w]
    cy = h / 2 if cy is None else cy
    cx = w / 2 if cx is None else cx
    return ((yy - cy) / (fy * h)) ** 2 + ((xx - cx) / (fx * w)) ** 2 < 1


def random_bank(n=12, size=32, seed=0, lo=20, hi=120):
    rng = np.random.default_rng(seed)
    crops, masks = [], []
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(lo, hi, 2))
        crops.append(rng.random((h, w), dtype=np.float32))
        masks.append(ellipse(h, w, *rng.uniform(0.2, 0.5, 2)))
    return ColonyBank(crops, masks, size), crops, masks


# -- prepare_colony ---------------------------------------------------------------------------
def test_resize_up_keeps_aspect_and_nearest_mask():
    crop = np.random.default_rng(0).random((30, 75), dtype=np.float32)
    mask = ellipse(30, 75, 0.35, 0.35)
    c, m = prepare_colony(crop, mask, 64)
    assert c.shape == m.shape == (64, 160)            # short side = size, 75 * 64/30 = 160
    assert c.dtype == np.float32 and m.dtype == bool
    assert abs(m.mean() - mask.mean()) < 0.03 * mask.mean()
    # the reference (bilinear then truncate) erodes the edge: strictly less area than ours
    import cv2
    eroded = cv2.resize(mask.astype(np.float32), (160, 64), interpolation=cv2.INTER_LINEAR)
    assert (eroded.astype(np.uint8) > 0).sum() < m.sum()
    assert prepared_shape(30, 75, 64) == (64, 160) and prepared_shape(75, 30, 64) == (160, 64)
    assert prepared_shape(33, 33, 100) == (100, 100)


def test_large_crop_unchanged_and_bad_input():
    crop, mask = np.zeros((80, 90), np.float32), np.ones((80, 90), bool)
    c, m = prepare_colony(crop, mask, 64)
    assert c is crop and m.shape == (80, 90)
    with pytest.raises(ValueError, match="differs"):
        prepare_colony(crop, mask[:10], 64)
    with pytest.raises(ValueError, match="2-D"):
        prepare_colony(np.zeros((80, 90, 3), np.float32), mask, 64)


def test_16bit_crop_is_scaled_to_unit():
    crop = np.full((40, 40), 65535, np.uint16)
    crop[0, 0] = 0
    c, _ = prepare_colony(crop, np.ones((40, 40), bool), 32)
    assert c.dtype == np.float32 and c.max() == 1.0 and c.min() == 0.0


# -- ColonyBank -------------------------------------------------------------------------------
def test_bank_stores_prepared_colonies_and_cover_is_exact():
    bank, crops, masks = random_bank()
    rng = np.random.default_rng(1)
    for i in range(len(bank)):
        c, m = prepare_colony(crops[i], masks[i], 32)
        assert np.array_equal(bank.crop(i), c) and np.array_equal(bank.mask(i), m)
        assert bank.areas[i] == m.sum()
    idx = rng.integers(0, len(bank), 200)
    pos = np.stack([rng.integers(0, bank.heights[idx] - 31), rng.integers(0, bank.widths[idx] - 31)], 1)
    brute = [bank.mask(i)[y:y + 32, x:x + 32].mean() for i, (y, x) in zip(idx, pos)]
    assert np.allclose(bank.cover(idx, pos), brute)


@pytest.mark.parametrize("size", [200, 256])
def test_cover_of_large_windows_does_not_overflow(size):
    # full windows sum to size**2 > 2**16 at 256; 600x600 of ones > 2**16 in the integral at 200
    bank = ColonyBank([np.zeros((600, 600), np.float32)], [np.ones((600, 600), bool)], size)
    pos = np.array([[0, 0], [600 - size, 600 - size], [123, 7]])
    assert np.allclose(bank.cover([0, 0, 0], pos), 1.0)


def test_sample_positions_respect_min_cover_and_bounds():
    bank, _, _ = random_bank(n=20, seed=2)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(bank), 2000)
    pos = bank.sample_positions(idx, rng, min_cover=0.25, max_tries=60)
    assert pos.shape == (2000, 2) and pos.dtype == np.int64
    assert (pos >= 0).all()
    assert (pos[:, 0] <= bank.heights[idx] - 32).all() and (pos[:, 1] <= bank.widths[idx] - 32).all()
    # every colony here has many windows over 25% cover, so every accepted patch reaches it
    assert (bank.cover(idx, pos) >= 0.25).all()
    # positions vary (not all the centre)
    assert len({tuple(p) for p in pos[idx == idx[0]]}) > 1


def test_unreachable_cover_keeps_best_draw():
    # a tiny colony in a corner: most windows of a 48x48 patch in 200x200 cover nothing
    mask = np.zeros((200, 200), bool)
    mask[:20, :20] = True
    bank = ColonyBank([np.zeros((200, 200), np.float32)], [mask], 48)
    idx = np.zeros(500, np.int64)
    best = bank.cover(idx, bank.sample_positions(idx, np.random.default_rng(0), 0.9, 5, "best"))
    last = bank.cover(idx, bank.sample_positions(idx, np.random.default_rng(0), 0.9, 5, "last"))
    assert (best >= last).all() and best.mean() > last.mean()


def test_keep_last_with_two_tries_is_the_reference_code():
    """The reference: draw; if the patch covers < min_cover, draw again and accept it anyway."""
    mask = np.zeros((100, 100), bool)
    mask[:, :50] = True                     # about half the 32-windows cover >= 25%
    bank = ColonyBank([np.zeros((100, 100), np.float32)], [mask], 32)
    span = np.array([100 - 32 + 1])
    second_draw_low = 0
    for seed in range(200):
        got = bank.sample_positions([0], np.random.default_rng(seed), 0.25, 2, "last")[0]
        rng = np.random.default_rng(seed)
        y, x = rng.integers(0, span)[0], rng.integers(0, span)[0]
        if mask[y:y + 32, x:x + 32].mean() < 0.25:
            y, x = rng.integers(0, span)[0], rng.integers(0, span)[0]
            second_draw_low += mask[y:y + 32, x:x + 32].mean() < 0.25
        assert (got == (y, x)).all()
    assert second_draw_low > 0              # the reference really accepts uncovered patches


def test_shared_bank_and_its_subsets_cut_the_same_patches():
    """arrays() -> from_arrays() (what a sweep puts in Ray's object store once) and take()
    (a part of a split) give the same patches, covers and masks as banks built directly."""
    bank, crops, masks = random_bank(n=10, size=24, seed=3)
    arrays = {k: v.copy() for k, v in bank.arrays().items()}
    for v in arrays.values():
        v.flags.writeable = False            # as read back from the object store
    shared = ColonyBank.from_arrays(arrays)
    idx = np.array([7, 2, 5])
    sub = shared.take(idx)
    direct = ColonyBank([crops[i] for i in idx], [masks[i] for i in idx], 24)
    rng = np.random.default_rng(0)
    pos = direct.sample_positions(np.arange(3), rng)
    assert torch.equal(sub.extract(np.arange(3), pos), direct.extract(np.arange(3), pos))
    assert np.allclose(sub.cover(np.arange(3), pos), direct.cover(np.arange(3), pos))
    assert all(np.array_equal(sub.mask(j), direct.mask(j)) for j in range(3))
    assert len(sub) == 3 and np.array_equal(sub.areas, direct.areas)


def test_center_positions_deterministic():
    bank, _, _ = random_bank()
    idx = np.arange(len(bank))
    c = bank.center_positions(idx)
    assert np.array_equal(c, bank.center_positions(idx))
    assert np.array_equal(c[:, 0], (bank.heights - 32) // 2)
    assert np.array_equal(c[:, 1], (bank.widths - 32) // 2)


def test_random_positions_in_mask():
    bank, _, _ = random_bank(n=8, seed=3)
    rng = np.random.default_rng(0)
    idx = np.arange(len(bank))
    pos = bank.random_positions_in_mask(idx, 7, rng)
    assert pos.shape == (8, 7, 2)
    for i in idx:
        m = bank.mask(i)
        for y, x in pos[i]:
            assert 0 <= y <= bank.heights[i] - 32 and 0 <= x <= bank.widths[i] - 32
            assert m[y + 16, x + 16]
    flat = bank.extract(np.repeat(idx, 7), pos.reshape(-1, 2))
    assert flat.shape == (56, 1, 32, 32)
    empty = ColonyBank([np.zeros((50, 60), np.float32)], [np.zeros((50, 60), bool)], 32)
    assert (empty.random_positions_in_mask([0], 3, rng) == empty.center_positions([0])).all()


def test_extract_matches_naive_slice():
    bank, _, _ = random_bank(seed=4)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(bank), 40)
    pos = bank.sample_positions(idx, rng)
    x = bank.extract(idx, pos)
    assert x.shape == (40, 1, 32, 32) and x.dtype == torch.float32
    for j, (i, (y, xx)) in enumerate(zip(idx, pos)):
        assert np.array_equal(x[j, 0].numpy(), bank.crop(i)[y:y + 32, xx:xx + 32])
    with pytest.raises(ValueError, match="outside"):
        bank.extract([0], [[bank.heights[0] - 31, 0]])
    with pytest.raises(IndexError):
        bank.extract([len(bank)], [[0, 0]])


def test_from_rows_dataframe_dicts_and_16bit():
    rng = np.random.default_rng(5)
    rows = []
    for h, w in [(20, 50), (70, 40), (90, 90)]:
        crop = rng.integers(0, 65536, (h, w)).astype(np.uint16)
        rows.append({"crop": encode_png(crop), "mask": encode_png(ellipse(h, w))})
    assert png_shape(rows[0]["crop"]) == (20, 50)
    from_dicts = ColonyBank.from_rows(rows, 32)
    from_df = ColonyBank.from_rows(pd.DataFrame(rows), 32)
    decoded = [decode_colony(r) for r in rows]
    direct = ColonyBank([c for c, _ in decoded], [m for _, m in decoded], 32)
    assert len(from_dicts) == len(from_df) == 3
    for i in range(3):
        assert np.array_equal(from_dicts.crop(i), direct.crop(i))
        assert np.array_equal(from_df.mask(i), direct.mask(i))
    assert direct.crop(2).max() <= 1.0 and len(np.unique(direct.crop(2))) > 256   # 16-bit kept
    with pytest.raises(KeyError, match="mask"):
        ColonyBank.from_rows(pd.DataFrame({"crop": [rows[0]["crop"]]}), 32)


# -- augmentation -----------------------------------------------------------------------------
def patches(n=16, s=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, s, s, generator=g)


def test_augment_is_deterministic_with_a_seeded_generator():
    x = patches()
    for view in ("train", "weak", "strong"):
        aug = make_augment(AugmentConfig(), view)
        a = aug(x, generator=torch.Generator().manual_seed(3))
        b = aug(x, generator=torch.Generator().manual_seed(3))
        c = aug(x, generator=torch.Generator().manual_seed(4))
        assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(x, patches())        # input never modified in place


def test_weak_view_is_a_flip_of_the_input():
    x = patches(64)
    aug = make_augment(AugmentConfig(normalize=False), "weak")
    y = aug(x, generator=torch.Generator().manual_seed(0))
    kinds = []
    for xi, yi in zip(x, y):
        flips = [xi, xi.flip(-1), xi.flip(-2), xi.flip(-1).flip(-2)]
        match = [k for k, f in enumerate(flips) if torch.equal(f, yi)]
        assert match
        kinds.append(match[0])
    assert len(set(kinds)) == 4             # p=0.5 each: all four outcomes in 64 samples
    assert torch.equal(make_augment(AugmentConfig(weak="none", normalize=False), "weak")(x), x)


def test_test_view_is_identity_plus_normalisation():
    x = patches()
    assert torch.equal(make_augment(AugmentConfig(normalize=False), "test")(x), x)
    y = make_augment(AugmentConfig(), "test")(x)
    mean, std = x.mean(dim=(1, 2, 3), keepdim=True), x.std(dim=(1, 2, 3), keepdim=True, correction=0)
    assert torch.allclose(y, (x - mean) / std, atol=1e-5)
    assert torch.allclose(y.mean(dim=(1, 2, 3)), torch.zeros(16), atol=1e-5)
    flat = make_augment(AugmentConfig(), "test")(torch.full((2, 1, 8, 8), 0.3))
    assert torch.isfinite(flat).all() and flat.abs().max() < 1e-4


def test_p_zero_is_identity():
    x = patches()
    cfg = AugmentConfig(p=0.0, strong_p=0.0, normalize=False)
    for view in ("train", "strong"):
        assert torch.equal(make_augment(cfg, view)(x, generator=torch.Generator()), x)


def test_rotation_preserves_shape_and_quarter_turn_is_exact():
    x = torch.rand(3, 1, 20, 28)
    assert Augment(Chain(p_rotate=1.0, rotate_deg=180.0))(x).shape == x.shape
    sq = patches(2, 16)
    assert torch.allclose(_rotate(sq, torch.tensor([90.0, 90.0])), torch.rot90(sq, 1, (-2, -1)),
                          atol=1e-5)
    assert torch.allclose(Augment(Chain(p_rotate=1.0, rotate_deg=1e-9))(sq), sq, atol=1e-5)


def test_blur_and_jitter_act_per_sample():
    x = patches(8, 32)
    blurred = Augment(Chain(p_blur=1.0, blur_sigma=(1.5, 2.0)))(x)
    assert (blurred.std(dim=(1, 2, 3)) < 0.5 * x.std(dim=(1, 2, 3))).all()
    const = torch.full((2, 1, 16, 16), 0.4)
    assert torch.allclose(Augment(Chain(p_blur=1.0))(const), const, atol=1e-6)
    flat = torch.full((64, 1, 8, 8), 0.5)
    bright = Augment(Chain(p_jitter=1.0, brightness=0.2))(flat, torch.Generator().manual_seed(0))
    factors = bright[:, 0, 0, 0] / 0.5
    assert factors.min() >= 0.8 - 1e-6 and factors.max() <= 1.2 + 1e-6 and factors.std() > 0.05


def test_blur_taps_hold_no_denormal_values():
    """A sigma that puts a Gaussian tap below float32's smallest normal (0.29: the tap 4 px out
    is ~5e-42) must not keep it: denormal arithmetic made the whole grouped convolution ~5x
    slower on CPU. Zeroing such taps changes no blurred patch that has no exact zeros."""
    sigma = torch.tensor([0.145, 0.22, 0.29, 0.36, 0.44, 1.0])
    like = torch.zeros(1)
    k = _gauss_taps(sigma, 6, like)
    assert not ((k != 0) & (k < torch.finfo(k.dtype).tiny)).any()
    assert torch.allclose(k.sum(dim=1), torch.ones(6)) and (k[:, 6] > 0.3).all()
    t = torch.arange(-6, 7, dtype=torch.float32)
    exact = torch.exp(-0.5 * (t / sigma.view(-1, 1)) ** 2)
    exact = exact / exact.sum(dim=1, keepdim=True)
    normal = exact >= torch.finfo(k.dtype).tiny
    assert torch.equal(k[normal], exact[normal])
    x = torch.rand(6, 1, 20, 20) * 0.9 + 0.1                     # no exact zeros: same blur
    y = _blur(x, sigma, 6)
    pad = F.pad(x, (6, 6, 0, 0), mode="reflect").reshape(1, 6, 20, 32)
    ref = F.conv2d(pad, exact.view(6, 1, 1, -1), groups=6)
    ref = F.conv2d(F.pad(ref, (0, 0, 6, 6), mode="reflect"), exact.view(6, 1, -1, 1), groups=6)
    assert torch.equal(y, ref.view(6, 1, 20, 20))


def test_normalisation_keeps_the_jitter_visible():
    x = patches(64)
    chain = Chain(p_jitter=1.0, brightness=0.4, normalize=True)
    y = Augment(chain)(x, torch.Generator().manual_seed(0))
    # stats are taken before the jitter, so jittered patches are not all zero-mean
    assert y.mean(dim=(1, 2, 3)).abs().max() > 0.3


def test_normalized_jitter_space_bounds_the_shift_on_low_contrast_patches():
    """jitter_space=normalized: brightness moves a z-scored patch by at most `brightness` std
    and contrast scales it; in pixel space the same jitter moves a low-contrast patch (std
    0.01 around 0.5) by many std."""
    g = torch.Generator().manual_seed(0)
    x = 0.5 + 0.01 * torch.randn(256, 1, 16, 16, generator=g)
    shifts = {}
    for space in ("pixel", "normalized"):
        chain = Chain(p_jitter=1.0, brightness=0.4, contrast=0.4, normalize=True,
                      jitter_space=space)
        y = Augment(chain)(x, torch.Generator().manual_seed(1))
        shifts[space] = y.mean(dim=(1, 2, 3)).abs()
        if space == "normalized":
            std = y.std(dim=(1, 2, 3))
            assert std.min() >= 0.6 - 0.01 and std.max() <= 1.4 + 0.01   # ddof=1 std
    assert shifts["normalized"].max() <= 0.4 + 1e-4
    assert shifts["pixel"].max() > 5.0
    # the config key reaches the views
    aug = make_augment(AugmentConfig(jitter_space="normalized"), "strong")
    assert aug.chain.jitter_space == "normalized"


def test_strong_differs_more_than_weak():
    # a flip-symmetric blob: the weak view (flips) leaves it as is, the strong view does not
    s = 32
    yy, xx = torch.meshgrid(torch.arange(s) - 15.5, torch.arange(s) - 15.5, indexing="ij")
    blob = (0.3 + 0.4 * torch.exp(-(yy ** 2 + xx ** 2 * 0.5) / 60)).expand(64, 1, s, s)
    cfg = AugmentConfig(normalize=False)
    g = torch.Generator().manual_seed(0)
    weak = make_augment(cfg, "weak")(blob, g)
    strong = make_augment(cfg, "strong")(blob, g)
    d_weak = (weak - blob).abs().mean(dim=(1, 2, 3))
    d_strong = (strong - blob).abs().mean(dim=(1, 2, 3))
    assert d_weak.max() < 1e-6 and d_strong.mean() > 0.01
    assert (d_strong > 1e-3).float().mean() > 0.5


def test_code_chain_views():
    cfg = AugmentConfig(chain="code")
    assert make_augment(cfg, "train").chain == Chain(p_hflip=0.5, p_vflip=0.5, normalize=True)
    weak, strong = make_augment(cfg, "weak").chain, make_augment(cfg, "strong").chain
    assert weak == strong and weak.p_rotate == cfg.p and weak.p_hflip == 0.5
    paper_strong = make_augment(AugmentConfig(), "strong").chain
    assert paper_strong.p_blur == 0.5 and paper_strong.brightness == 0.4
    with pytest.raises(ValueError, match="view"):
        make_augment(cfg, "labeled")
    with pytest.raises(ValueError, match="blur_sigma"):
        make_augment(dataclasses.replace(cfg, blur_sigma=(0.0, 1.0)), "test")


def test_center_half_and_multi_scale_flow():
    assert center_half(torch.zeros(2, 1, 224, 224)).shape == (2, 1, 112, 112)
    x = torch.arange(64.0).view(1, 1, 8, 8)
    assert torch.equal(center_half(x), x[..., 2:6, 2:6])
    bank, _, _ = random_bank(n=6, size=64, seed=6, lo=40, hi=160)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(bank), 8)
    big = make_augment(AugmentConfig(), "strong")(bank.extract(idx, bank.sample_positions(idx, rng)))
    assert big.shape == (8, 1, 64, 64) and center_half(big).shape == (8, 1, 32, 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_augment_on_gpu_matches_cpu():
    x = patches()
    aug = make_augment(AugmentConfig(), "strong")
    cpu = aug(x, torch.Generator().manual_seed(0))
    gpu = aug(x.cuda(), torch.Generator().manual_seed(0))
    assert gpu.is_cuda and torch.allclose(cpu, gpu.cpu(), atol=1e-4)
