"""Batched patch augmentation on (B, C, H, W) float tensors in [0, 1], CPU or GPU (PAPER.md s.4).

    aug = make_augment(cfg.augment, "strong"); x = aug(bank.extract(idx, pos), generator=g)

Every op is drawn independently per sample (per-sample flips, angles, jitter factors, blur
sigmas), all random numbers come from one explicit `torch.Generator`, and each op runs once on the
subset of the batch that drew it, so a batch costs a few tensor ops instead of B PIL pipelines.

Views:
  chain=paper (default): train = the paper's chain (flips, rotation 0..rotate_deg, brightness/
    contrast, Gaussian blur, each with p); weak = flips only at p=0.5 (`weak=none`: identity);
    strong = the paper's chain at strong_p with strong_brightness/strong_contrast.
  chain=code (the reference code): train = flips only at p=0.5; weak and strong are the same
    mild chain (flips at 0.5, rotation/jitter/blur at p) -- no real weak/strong split; `weak`
    is not read.
  test: identity.
Normalisation (`normalize`): per-patch z-score with the mean and std of the patch as it came in,
applied after the photometric ops. Statistics of the incoming patch make 8- and 16-bit data and
uneven illumination look alike, while a brightness/contrast jitter or blur still changes what the
network sees (a z-score of the jittered patch itself would cancel the jitter exactly). The
reference code skipped normalisation; `normalize=false` reproduces that.
`jitter_space=normalized` z-scores first and jitters the z-scores instead (brightness = an offset
of at most `brightness` std, contrast = a factor): a low-contrast patch is then shifted by at
most that, not by the several std that a pixel-space brightness factor gives it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ipb.config import AugmentConfig

View = Literal["train", "weak", "strong", "test"]
STD_FLOOR = 1e-3   # a quarter of an 8-bit grey level: flat patches are not blown up to unit std


@dataclass(frozen=True)
class Chain:
    """Probabilities and strengths of one view; p=0 switches an op off."""
    p_hflip: float = 0.0
    p_vflip: float = 0.0
    p_rotate: float = 0.0
    rotate_deg: float = 180.0
    p_jitter: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    p_blur: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    normalize: bool = False
    jitter_space: str = "pixel"     # "normalized": z-score first, jitter the z-scores


def _rotate(x: torch.Tensor, deg: torch.Tensor) -> torch.Tensor:
    """Rotate each sample by its own angle about the patch centre; reflection fills corners."""
    n, _, h, w = x.shape
    rad = deg.to(x.device, x.dtype) * (math.pi / 180.0)
    cos, sin = torch.cos(rad).view(n, 1, 1), torch.sin(rad).view(n, 1, 1)
    # the sampling grid built by broadcasting (affine_grid's batched matmul is slow on CPU);
    # normalised coordinates scale x by 2/W and y by 2/H, hence the aspect factors
    u = ((torch.arange(w, device=x.device, dtype=x.dtype) * 2 + 1) / w - 1).view(1, 1, w)
    v = ((torch.arange(h, device=x.device, dtype=x.dtype) * 2 + 1) / h - 1).view(1, h, 1)
    # written into the grid's two planes (a torch.stack of gx, gy copied them: ~0.4 of 0.8 ms)
    grid = torch.empty(n, h, w, 2, device=x.device, dtype=x.dtype)
    torch.sub(cos * u, (sin * (h / w)) * v, out=grid[..., 0])
    torch.add((sin * (w / h)) * u, cos * v, out=grid[..., 1])
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _jitter(x: torch.Tensor, bright: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
    """torchvision ColorJitter semantics for grey images: scale, then stretch about the mean."""
    b = bright.to(x.device, x.dtype).view(-1, 1, 1, 1)
    c = contrast.to(x.device, x.dtype).view(-1, 1, 1, 1)
    x = (x * b).clamp_(0.0, 1.0)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * c + mean).clamp_(0.0, 1.0)


def _jitter_z(x: torch.Tensor, offset: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
    """Jitter of z-scored patches: contrast scales about the patch mean, brightness adds an
    offset in units of the patch's own std (bounded, whatever the patch's contrast)."""
    o = offset.to(x.device, x.dtype).view(-1, 1, 1, 1)
    c = contrast.to(x.device, x.dtype).view(-1, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * c + mean + o


def _gauss_taps(sigma: torch.Tensor, radius: int, like: torch.Tensor) -> torch.Tensor:
    """(n, 2r+1) normalised Gaussian taps, one row per sigma. Taps below float's smallest
    normal are 0: one there (a sigma near 0.14, 0.22, 0.29, 0.36 or 0.44) made the whole
    grouped convolution ~5x slower (denormal arithmetic: 4.8 vs 0.9 ms for 8 patches of
    128 px), in ~40% of train-view batches. Its products sit below a normal sum's last bit, so
    only a pixel whose whole support is exactly 0 can change (by < 1e-37): with `normalize`
    in pixel jitter space (the default) no network input changes; in normalized jitter space
    (z-scores blurred, not normalised after) a z-score of exactly 0 around it can."""
    t = torch.arange(-radius, radius + 1, device=like.device, dtype=like.dtype)
    s = sigma.to(like.device, like.dtype).view(-1, 1)
    k = torch.exp(-0.5 * (t / s) ** 2)
    k = k / k.sum(dim=1, keepdim=True)
    return torch.where(k < torch.finfo(k.dtype).tiny, 0.0, k)


def _blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur, one kernel per sample, as a grouped convolution."""
    n, c, h, w = x.shape
    radius = max(1, min(radius, h - 1, w - 1))
    k = _gauss_taps(sigma, radius, x).repeat_interleave(c, dim=0)     # (n*c, 2r+1)
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k.view(n * c, 1, 1, -1),
                 groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k.view(n * c, 1, -1, 1),
                 groups=n * c)
    return y.view(n, c, h, w)


def _apply(x: torch.Tensor, sel: torch.Tensor, fn, *params: torch.Tensor) -> torch.Tensor:
    """fn applied in place of the samples where `sel` (on CPU) is true; x is forward's own copy."""
    rows = sel.nonzero().flatten()
    if rows.numel() == 0:
        return x
    if rows.numel() == x.shape[0]:
        return fn(x, *params)
    dev_rows = rows.to(x.device)
    return x.index_copy_(0, dev_rows, fn(x.index_select(0, dev_rows), *(p[rows] for p in params)))


class Augment(torch.nn.Module):
    """One view's augmentation: `aug(x, generator=None) -> x` for (B, C, H, W) float tensors."""

    def __init__(self, chain: Chain):
        super().__init__()
        self.chain = chain
        lo, hi = chain.blur_sigma
        if not 0 < lo <= hi:
            raise ValueError(f"augment.blur_sigma must be 0 < low <= high, got {chain.blur_sigma}")
        self._radius = int(math.ceil(3.0 * hi))

    def extra_repr(self) -> str:
        return repr(self.chain)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"augment expects (B, C, H, W) patches, got shape {tuple(x.shape)}")
        c = self.chain
        n = x.shape[0]
        if c.normalize:
            # two passes over the patch: faster than torch.std on CPU and stable in float32
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            std = (x - mean).square_().mean(dim=(1, 2, 3), keepdim=True).sqrt_()
            std = std.clamp_min_(STD_FLOOR)
        probs = [c.p_hflip, c.p_vflip, c.p_rotate, c.p_jitter, c.p_blur]
        if max(probs) <= 0:      # identity chain (test view): leave every RNG untouched
            return x.sub(mean).div_(std) if c.normalize else x.clone()
        # Draw every number for the batch up front in a fixed order so a seeded generator gives
        # the same batch whatever ops end up selected.
        dev = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand(n, 5, generator=generator, device=dev).cpu()
        r = torch.rand(n, 4, generator=generator, device=dev).cpu()
        sel = u < torch.tensor(probs)
        angle = r[:, 0] * c.rotate_deg
        bright = (1.0 + (2.0 * r[:, 1] - 1.0) * c.brightness).clamp_min(0.0)
        contrast = (1.0 + (2.0 * r[:, 2] - 1.0) * c.contrast).clamp_min(0.0)
        lo, hi = c.blur_sigma
        sigma = lo + r[:, 3] * (hi - lo)

        z_first = c.normalize and c.jitter_space == "normalized"
        # never write into the caller's tensor (extract may reuse a buffer)
        x = x.sub(mean).div_(std) if z_first else x.clone()
        x = _apply(x, sel[:, 0], lambda t: t.flip(-1))
        x = _apply(x, sel[:, 1], lambda t: t.flip(-2))
        x = _apply(x, sel[:, 2], _rotate, angle)
        if z_first:
            x = _apply(x, sel[:, 3], _jitter_z, bright - 1.0, contrast)
        else:
            x = _apply(x, sel[:, 3], _jitter, bright, contrast)
        x = _apply(x, sel[:, 4], lambda t, s: _blur(t, s, self._radius), sigma)
        if c.normalize and not z_first:
            x = x.sub_(mean).div_(std)
        return x


def make_augment(cfg: AugmentConfig, view: View) -> Augment:
    """The augmentation of one view ('train' labeled, 'weak'/'strong' unlabeled, 'test')."""
    common = dict(rotate_deg=cfg.rotate_deg, blur_sigma=tuple(cfg.blur_sigma),
                  normalize=cfg.normalize, jitter_space=cfg.jitter_space)

    def full(p: float, p_flip: float, brightness: float, contrast: float) -> Chain:
        return Chain(p_hflip=p_flip, p_vflip=p_flip, p_rotate=p, p_jitter=p, brightness=brightness,
                     contrast=contrast, p_blur=p, **common)

    flips = Chain(p_hflip=0.5, p_vflip=0.5, **common)
    identity = Chain(**common)
    if view == "test":
        return Augment(identity)
    if cfg.chain == "paper":
        if view == "train":
            return Augment(full(cfg.p, cfg.p, cfg.brightness, cfg.contrast))
        if view == "weak":
            return Augment(flips if cfg.weak == "flips" else identity)
        if view == "strong":
            return Augment(full(cfg.strong_p, cfg.strong_p, cfg.strong_brightness,
                                cfg.strong_contrast))
    elif cfg.chain == "code":
        if view == "train":
            return Augment(flips)
        if view in ("weak", "strong"):
            return Augment(full(cfg.p, 0.5, cfg.brightness, cfg.contrast))
    else:
        raise ValueError(f"augment.chain must be 'paper' or 'code', got {cfg.chain!r}")
    raise ValueError(f"augment view must be 'train', 'weak', 'strong' or 'test', got {view!r}")
