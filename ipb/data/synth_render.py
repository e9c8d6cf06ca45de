"""Rendering of synthetic phase-contrast wells (no files): textures, colony outlines, wells.

    python -c "from ipb.config import SynthConfig; from ipb.data.synth_render import render_well; \
import numpy as np; img, mask, rows = render_well(SynthConfig(), np.random.default_rng(0))[0]"

Classes differ by cell size, texture contrast and unevenness, outline and extras (processes,
bright rims); `difficulty` pulls the class parameters together and adds blur, noise and
gradient. `well_nuisance` > 0 adds what differs between real wells whatever the class
(`well_nuisance`: gain, blur, illumination and cell scale drawn once per well), so a few
labelled colonies cover few of the conditions U covers. ipb/data/synth.py writes what this
draws, labelled SYNTHETIC.
"""
from __future__ import annotations

import cv2
import numpy as np

from ipb.config import ConfigError, SynthConfig

# multi-label pairs and their share of the multi-label colonies (paper: 1436 vs 1223)
MULTI_PAIRS = (("Dense|Differentiated", 0.54), ("Dense|Spread", 0.46))
# per-class texture means: cell blob sigma px, texture contrast, unevenness, base offset,
# outline irregularity, size factor (relative to the well's mean colony radius)
CLASS_PARAMS = {
    "Dense": dict(cell=1.1, contrast=0.036, uneven=0.10, offset=-0.018, irregular=0.05, size=0.9),
    "Spread": dict(cell=2.9, contrast=0.026, uneven=0.70, offset=-0.005, irregular=0.16, size=1.25),
    "Differentiated": dict(cell=1.8, contrast=0.014, uneven=0.40, offset=0.005, irregular=0.12,
                           size=1.0),
    "Debris": dict(cell=2.2, contrast=0.030, uneven=0.20, offset=-0.050, irregular=0.03,
                   size=0.55),
}
_TEXTURE_KEYS = ("cell", "contrast", "uneven", "offset")
_MIN_RADIUS = 26          # px: area >= ~2000 px so the paper's min-area filter keeps it


def label_probs(cfg: SynthConfig) -> dict[str, float]:
    """Fraction of ALL colonies per label ("A|B" for multi-label), from class_mix + multi frac."""
    mix = {name: float(w) for name, w in cfg.class_mix if float(w) > 0}
    unknown = sorted(set(mix) - set(CLASS_PARAMS))
    if unknown or not mix:
        raise ConfigError(f"config key 'synth.class_mix': unknown classes {unknown}; "
                          f"allowed: {', '.join(sorted(CLASS_PARAMS))}")
    if not 0.0 <= cfg.multi_label_frac < 1.0:
        raise ConfigError("config key 'synth.multi_label_frac' must be in [0, 1)")
    pairs = [(p, w) for p, w in MULTI_PAIRS if set(p.split("|")) <= set(mix)]
    multi = cfg.multi_label_frac if pairs else 0.0
    total = sum(mix.values())
    probs = {c: (1 - multi) * w / total for c, w in sorted(mix.items())}
    pw = sum(w for _, w in pairs)
    probs.update({p: multi * w / pw for p, w in pairs})
    return probs


def allocate_labels(n: int, cfg: SynthConfig, rng: np.random.Generator) -> list[str]:
    """n labels in the config's proportions (largest remainder, so small sets keep every class
    they can), at least 2 Differentiated once n >= 60, in random order."""
    probs = label_probs(cfg)
    names = list(probs)
    exact = np.array([probs[k] * n for k in names])
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    floor = {k: (1 if n >= len(names) else 0) for k in names}
    if n >= 60 and "Differentiated" in floor:
        floor["Differentiated"] = 2
    for i, k in enumerate(names):
        while counts[i] < floor[k]:
            counts[int(np.argmax(counts))] -= 1
            counts[i] += 1
    labels = [k for k, c in zip(names, counts) for _ in range(c)]
    return [labels[i] for i in rng.permutation(len(labels))]


def _lowfreq(h: int, w: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth unit-std noise with feature size ~scale px (small noise image, upsampled)."""
    sh, sw = max(2, int(h / scale) + 2), max(2, int(w / scale) + 2)
    f = cv2.resize(rng.standard_normal((sh, sw)).astype(np.float32), (w, h),
                   interpolation=cv2.INTER_CUBIC)
    return (f - f.mean()) / (f.std() + 1e-6)


def _impulses(h: int, w: int, n: int, rng: np.random.Generator, weights=None) -> np.ndarray:
    field = np.zeros((h, w), np.float32)
    ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
    np.add.at(field, (ys, xs), 1.0 if weights is None else weights)
    return field


def _cells(h: int, w: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-std cell texture: dark nuclei of size sigma with brighter borders (DoG of impulses)."""
    n = int(h * w / (9.0 * sigma * sigma)) + 1
    imp = _impulses(h, w, n, rng)
    f = cv2.GaussianBlur(imp, (0, 0), 1.8 * sigma) * 0.6 - cv2.GaussianBlur(imp, (0, 0), sigma)
    return (f - f.mean()) / (f.std() + 1e-6)


def _spots(h, w, n, sigma, rng, mask=None) -> np.ndarray:
    """n Gaussian spots of peak ~1 (inside mask if given)."""
    if mask is not None:
        idx = np.flatnonzero(mask)
        if len(idx) == 0:
            return np.zeros((h, w), np.float32)
        pick = idx[rng.integers(0, len(idx), n)]
        imp = np.zeros(h * w, np.float32)
        np.add.at(imp, pick, 1.0)
        imp = imp.reshape(h, w)
    else:
        imp = _impulses(h, w, n, rng)
    return cv2.GaussianBlur(imp, (0, 0), sigma) * (2 * np.pi * sigma * sigma)


def _processes(h, w, mask, n_bodies, amp, rng) -> tuple[np.ndarray, np.ndarray]:
    """Dark cell bodies with long thin curved processes (axon-like), drawn inside the box."""
    bodies = _spots(h, w, n_bodies, 2.6, rng, mask)
    idx = np.flatnonzero(mask)
    canvas = np.zeros((h, w), np.uint8)
    if len(idx):
        starts = idx[rng.integers(0, len(idx), 2 * n_bodies)]
        lines = []
        for s in starts:
            y, x = divmod(int(s), w)
            ang, seg = rng.uniform(0, 2 * np.pi), rng.uniform(8, 22)
            steps = rng.normal(0, 0.35, 5).cumsum() + ang
            pts = np.stack([x + seg * np.cos(steps).cumsum(), y + seg * np.sin(steps).cumsum()], 1)
            lines.append(np.vstack([[x, y], pts]).round().astype(np.int32))
        cv2.polylines(canvas, lines, False, 255, 1, cv2.LINE_AA)
    return -0.20 * bodies, -amp * canvas.astype(np.float32) / 255.0


def _texture(cls: str, p: dict, mask: np.ndarray, dist_in: np.ndarray, d: float,
             rng: np.random.Generator) -> np.ndarray:
    """Intensity change (around the background level) of one class over a colony box."""
    h, w = mask.shape
    mod = np.clip(1.0 + p["uneven"] * _lowfreq(h, w, 18, rng), 0.3, 2.5)
    f = p["contrast"] * mod * _cells(h, w, p["cell"], rng)
    # a faint fine texture everywhere (cell borders): even flat cells are not background
    f += 0.02 * _cells(h, w, 0.9, rng)
    f += p["offset"] + 0.5 * p["uneven"] * p["contrast"] * _lowfreq(h, w, 30, rng)
    if cls == "Dense":   # scattered dark (mitotic) cells, as in real hiPSC colonies
        f -= 0.10 * _spots(h, w, max(1, int(mask.sum() / 900)), 1.8, rng, mask)
    elif cls == "Differentiated":
        n = max(3, int(mask.sum() / 800))
        bodies, procs = _processes(h, w, mask, n, 0.16 * (1 - 0.65 * d), rng)
        f += bodies + procs
    elif cls == "Debris":   # round dead cells: dark cores with bright rims, bright colony rim
        s = p["cell"]
        r = int(round(2 * s)) + 1
        k = np.zeros((2 * r + 3, 2 * r + 3), np.float32)
        cv2.circle(k, (r + 1, r + 1), r, 1.0, 1, cv2.LINE_AA)
        k = cv2.GaussianBlur(k, (0, 0), 0.6) - 0.7 * cv2.GaussianBlur(
            cv2.circle(np.zeros_like(k), (r + 1, r + 1), max(1, r - 1), 1.0, -1), (0, 0), 0.8)
        imp = _impulses(h, w, int(h * w / (10 * s * s)), rng)
        f += 0.10 * cv2.filter2D(imp, -1, k)
        f += 0.22 * (1 - 0.4 * d) * np.exp(-((dist_in - 2.0) ** 2) / 4.5)
    return f


def _class_params(cls: str, d: float, rng: np.random.Generator) -> dict:
    """Texture parameters drawn per colony; difficulty pulls classes together and widens them."""
    mean = {k: np.mean([c[k] for c in CLASS_PARAMS.values()]) for k in _TEXTURE_KEYS}
    out = {}
    for k in _TEXTURE_KEYS:
        mu = CLASS_PARAMS[cls][k] + 0.5 * d * (mean[k] - CLASS_PARAMS[cls][k])
        jitter = rng.normal(0, 0.12 + 0.25 * d)
        out[k] = mu + abs(mu) * jitter if k == "offset" else mu * float(np.exp(jitter))
    return out


def _outline(r: float, irregular: float, rng: np.random.Generator) -> np.ndarray:
    """Radius at 180 angles: a rotated ellipse with random harmonics (the colony outline)."""
    th = np.linspace(0, 2 * np.pi, 180, endpoint=False)
    k = np.arange(2, 24)[:, None]
    amp, phase = rng.normal(0, irregular / k ** 0.9), rng.uniform(0, 2 * np.pi, k.shape)
    rad = 1 + (amp * np.cos(k * th + phase)).sum(0)
    e, phi = rng.uniform(1.0, 1.5), rng.uniform(0, np.pi)
    rad *= 1 / np.sqrt((np.cos(th - phi) / e) ** 2 + (np.sin(th - phi) * e) ** 2) ** 0.5
    return r * np.clip(rad, 0.55, 1.7)


# per-well nuisance at well_nuisance=1: cell scale exp(U(-a, a)), texture gain exp(N(0, s)),
# extra blur U(0, b) px, illumination gradient x U(0.5, 1 + 3) and level +-U(l); class-free
NUISANCE = dict(scale=0.2, gain=0.35, blur=1.0, gradient=3.0, level=0.06)


def well_nuisance(cfg: SynthConfig, rng: np.random.Generator) -> dict[str, float]:
    """The class-independent conditions of one well (all neutral at well_nuisance=0)."""
    k = float(cfg.well_nuisance)
    if k <= 0:
        return dict(scale=1.0, gain=1.0, blur=0.0, gradient=1.0, level=0.0)
    return dict(scale=float(np.exp(rng.uniform(-1, 1) * NUISANCE["scale"] * k)),
                gain=float(np.exp(rng.normal(0, NUISANCE["gain"] * k))),
                blur=float(rng.uniform(0, NUISANCE["blur"] * k)),
                gradient=float(rng.uniform(0.5, 1 + NUISANCE["gradient"] * k)),
                level=float(rng.uniform(-1, 1) * NUISANCE["level"] * k))


def colony_radius(cfg: SynthConfig, n: int, factor: float, rng: np.random.Generator,
                  scale: float = 1.0) -> float:
    """A colony's mean radius (px): the well's mean for n colonies x class size factor x
    log-normal jitter x the well's cell scale (benchmarks/ideal_observer.py draws the same)."""
    r0 = np.sqrt(0.33 * cfg.size * cfg.size / (max(n, 1) * np.pi))
    return float(np.clip(r0 * factor * scale * np.exp(rng.normal(0, 0.22)), _MIN_RADIUS,
                         cfg.size / 4))


def _place(cfg: SynthConfig, classes: list[str], growth: np.ndarray, rng,
           scale: float = 1.0) -> list[dict]:
    """Centres and outlines without overlap (at final size); some colonies touch the border."""
    size, n = cfg.size, len(classes)
    placed: list[dict] = []
    for i, lab in enumerate(classes):
        parts = lab.split("|")
        factor = np.mean([CLASS_PARAMS[c]["size"] for c in parts])
        irregular = np.mean([CLASS_PARAMS[c]["irregular"] for c in parts])
        r = colony_radius(cfg, n, factor, rng, scale)
        rad = _outline(r, irregular, rng)
        for attempt in range(300):
            if attempt and attempt % 60 == 0:   # crowded: shrink rather than overlap
                rad = rad * min(1.0, max(0.85, _MIN_RADIUS * 0.7 / rad.mean()))
            reach = rad.max() * growth[i]
            cx, cy = rng.uniform(0.15 * reach, size - 0.15 * reach, 2)
            if all(np.hypot(cx - q["cx"], cy - q["cy"]) > reach + q["reach"] + 6 for q in placed):
                break
        placed.append(dict(cx=cx, cy=cy, rad=rad, reach=reach, seed=int(rng.integers(2**31))))
    return placed


def _background(cfg: SynthConfig, rng: np.random.Generator, nuisance: dict) -> np.ndarray:
    s, d = cfg.size, cfg.difficulty
    yy, xx = (np.arange(s, dtype=np.float32)[:, None] / s - 0.5,
              np.arange(s, dtype=np.float32)[None, :] / s - 0.5)
    ang = rng.uniform(0, 2 * np.pi)
    g = (0.015 + 0.06 * d) * rng.uniform(0.6, 1.0) * nuisance["gradient"]
    bg = 0.5 + nuisance["level"] + rng.uniform(-0.04, 0.04) + \
        g * (np.cos(ang) * xx + np.sin(ang) * yy)
    bg -= 0.5 * g * (xx * xx + yy * yy)
    bg += 0.006 * _lowfreq(s, s, s / 12, rng) + 0.003 * _lowfreq(s, s, 6, rng)
    specks = _spots(s, s, int(s * s / 9000), 1.6, rng)
    return (bg - 0.12 * specks + 0.03 * cv2.GaussianBlur(specks, (0, 0), 3.0)).astype(np.float32)


def _evolve(labels: list[str], T: int, rng) -> list[list[str]]:
    """Label per time point: some Dense colonies turn Spread or Differentiated, a few Spread
    colonies differentiate, at a random time."""
    out = []
    for lab in labels:
        seq = [lab] * T
        if T > 1:
            to = None
            if lab == "Dense" and rng.random() < 0.3:
                to = "Spread" if rng.random() < 0.6 else "Differentiated"
            elif lab == "Spread" and rng.random() < 0.05:
                to = "Differentiated"
            if to is not None:
                t = int(rng.integers(1, T))
                seq[t:] = [to] * (T - t)
        out.append(seq)
    return out


def render_well(cfg: SynthConfig, rng: np.random.Generator, time_points: int = 1,
                classes: list[str] | None = None) -> list[tuple[np.ndarray, np.ndarray, list[dict]]]:
    """One well (or its time series): per time point (image, uint16 instance mask, colonies).

    `classes`: the label of each colony ("A|B" = multi-label); default = a multinomial draw of
    `cfg.colonies_per_well` labels in the config's proportions."""
    if classes is None:
        probs = label_probs(cfg)
        classes = list(rng.choice(list(probs), size=cfg.colonies_per_well,
                                  p=np.array(list(probs.values())) / sum(probs.values())))
    T, s, d = max(1, int(time_points)), cfg.size, float(np.clip(cfg.difficulty, 0, 1))
    nz = well_nuisance(cfg, rng)    # draws nothing at well_nuisance=0: old wells unchanged
    growth = 1 + (rng.uniform(0.08, 0.25, len(classes)) if T > 1 else np.zeros(len(classes)))
    colonies = _place(cfg, classes, growth, rng, nz["scale"])
    seqs = _evolve(classes, T, rng)
    bg = _background(cfg, rng, nz)
    blur, noise = 0.3 + 1.2 * d + nz["blur"], 0.003 + 0.010 * d
    th = np.linspace(0, 2 * np.pi, 180, endpoint=False)
    out = []
    for t in range(T):
        img, inst, rows = bg.copy(), np.zeros((s, s), np.uint16), []
        for k, (col, seq) in enumerate(zip(colonies, seqs), start=1):
            scale = 1 + (growth[k - 1] - 1) * (t / (T - 1) if T > 1 else 0)
            row = _draw_colony(img, inst, k, col, col["rad"] * scale, seq[t], t, d, nz, th)
            if row is not None:
                rows.append(row)
        img = cv2.GaussianBlur(img, (0, 0), blur)
        img += noise * rng.standard_normal(img.shape, dtype=np.float32)
        top = 255 if cfg.bit_depth == 8 else 65535
        img = np.clip(img * top + 0.5, 0, top).astype(np.uint8 if cfg.bit_depth == 8 else np.uint16)
        out.append((img, inst, rows))
    return out


def _draw_colony(img: np.ndarray, inst: np.ndarray, k: int, col: dict, rad: np.ndarray,
                 lab: str, t: int, d: float, nz: dict, th: np.ndarray) -> dict | None:
    """Colony k (outline radii `rad` at angles `th`, label `lab` at time t) into `img` and the
    instance mask `inst`, where no earlier colony is; its row, or None when under 50 px of it
    are free."""
    s = inst.shape[0]
    half = int(np.ceil(rad.max())) + 8
    x0, y0 = int(col["cx"]) - half, int(col["cy"]) - half
    pts = np.stack([col["cx"] - x0 + rad * np.cos(th), col["cy"] - y0 + rad * np.sin(th)], 1)
    local = np.zeros((2 * half, 2 * half), np.uint8)
    cv2.fillPoly(local, [np.round(pts * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
    # clip the local box to the image
    gx0, gy0, gx1, gy1 = max(x0, 0), max(y0, 0), min(x0 + 2 * half, s), min(y0 + 2 * half, s)
    lx0, ly0 = gx0 - x0, gy0 - y0
    sl_g = (slice(gy0, gy1), slice(gx0, gx1))
    sl_l = (slice(ly0, ly0 + gy1 - gy0), slice(lx0, lx0 + gx1 - gx0))
    free = inst[sl_g] == 0
    m = (local[sl_l] > 0) & free
    if m.sum() < 50:
        return None
    dist_in = cv2.distanceTransform(local, cv2.DIST_L2, 3)[sl_l]
    dist_out = cv2.distanceTransform(1 - local, cv2.DIST_L2, 3)[sl_l]
    parts = lab.split("|")
    f = _colony_field(col, parts, t, m, dist_in, d, nz, (col["cy"] - gy0, col["cx"] - gx0))
    alpha = cv2.GaussianBlur(m.astype(np.float32), (0, 0), 1.0)
    # phase-contrast halo: a thin bright line along every colony edge
    halo = (0.08 if "Debris" in parts else 0.035) * np.exp(-dist_out / 2.0) * (dist_out > 0)
    img[sl_g] += alpha * f + halo * free
    inst[sl_g][m] = k
    ys, xs = np.nonzero(m)
    return dict(id=k, x0=int(gx0 + xs.min()), y0=int(gy0 + ys.min()),
                x1=int(gx0 + xs.max() + 1), y1=int(gy0 + ys.max() + 1),
                label=lab, multi_label=len(parts) > 1)


def _colony_field(col: dict, parts: list[str], t: int, m: np.ndarray, dist_in: np.ndarray,
                  d: float, nz: dict, centre: tuple[float, float]) -> np.ndarray:
    """The colony's texture: its class's, or two classes' blended over a region (a
    multi-label colony: Spread on the periphery, else Differentiated on one half)."""
    trng = np.random.default_rng([col["seed"], t // 4])   # texture drifts slowly
    fields = []
    for c in parts:
        crng = np.random.default_rng([col["seed"], sum(map(ord, c))])
        params = _class_params(c, d, crng)
        params["cell"] *= nz["scale"]
        fields.append(nz["gain"] * _texture(c, params, m, dist_in, d, trng))
    if len(parts) != 2:
        return fields[0]
    if "Spread" in parts:
        second = dist_in < 0.45 * dist_in.max()
        other = parts.index("Spread")
    else:
        a = np.random.default_rng(col["seed"]).uniform(0, 2 * np.pi)
        yy, xx = np.ogrid[0:m.shape[0], 0:m.shape[1]]
        cy, cx = centre
        second = (np.cos(a) * (xx - cx) + np.sin(a) * (yy - cy)) > 0
        other = parts.index("Differentiated")
    sel = cv2.GaussianBlur(second.astype(np.float32), (0, 0), 3.0)
    return fields[1 - other] * (1 - sel) + fields[other] * sel
