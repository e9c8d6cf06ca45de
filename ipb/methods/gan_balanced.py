"""GAN minority balancing (Witmer & Bhanu, Sensors 22:206, 2022): generated minority patches
top the labeled set up to balance, then the supervised CNN trains on real + generated.

    ipb train --method gan_balanced --arch vgg19 --fold 0 [method.gan_balanced.epochs=N]

GAN epochs (`method.gan_balanced.epochs`, 0 = `train.epochs`): a small conditional DCGAN
(ipb/methods/gan_nets.py) on the labeled batches (the training view, as the classifier sees
them), hinge losses and Adam with a two-time-scale learning rate (LR_G, LR_D, BETAS: SNGAN's).
It needs steps: on the smoke data its patches still looked alike for all classes at ~500
steps and became diverse by ~1,500 (train.steps_per_epoch x method.gan_balanced.epochs).
Then, once: with n_c labeled colonies of class c, max(n) - n_c patches of class c are generated
(at most POOL_CAP) -- L is balanced. The classifier epochs (`train.epochs`) are the supervised
CNN's, except that a labeled sample of class c in a batch is replaced, with probability
g_c / (n_c + g_c), by a random generated patch of class c (randomly flipped): since the
ground-truth-balanced sampler draws every class alike, each class is then drawn as from the
balanced real + generated set. At the same moment the run gets, as MLflow artifacts
(`final_report`): a grid of real and generated patches per class, and a realism check -- a
small CNN trained to tell held-in real from generated patches, its held-out accuracy
`gan.realism_acc` (0.5 = it cannot tell them apart, 1.0 = it always can).
"""
from __future__ import annotations

from dataclasses import dataclass

import io
import json

import numpy as np
import torch
import torch.nn.functional as F

from ipb.config.settings import knob, method_settings
from ipb.methods.base import Method, make_optimizer, register_method, set_lr, unwrap
from ipb.methods.gan_nets import G_CH, Z_DIM, Discriminator, Generator, probe_accuracy


@method_settings("gan_balanced")
@dataclass(frozen=True)
class GANSettings:
    """GAN balancing's keys."""
    epochs: int = knob(0, "[0, inf)", legacy="gan_epochs")   # the GAN stage; 0 = train.epochs

LR_G, LR_D, BETAS = 1e-4, 4e-4, (0.0, 0.9)
POOL_CAP = 5000                    # generated patches per class at most
REAL_KEEP = 512                    # real patches kept (per worker) for the grid and the probe
PROBE_EPOCHS, PROBE_BATCH = 20, 64  # the probe's passes over its training half
GRID_COLS = 8


@register_method
class GANBalanced(Method):
    """A conditional GAN tops L's minority classes up to balance, then the CNN trains on L."""
    name = "gan_balanced"
    phases = ("gan", "supervised")

    def __init__(self, cfg, num_classes, device, wrap):
        super().__init__(cfg, num_classes, device, wrap)
        from ipb.models import model_info
        self.size = cfg.patch.ms_size if model_info(cfg.model.arch)["multi_scale"] else \
            cfg.patch.size
        # channels scale with model.width like the classifier's (floor 8)
        ch = max(8, int(round(G_CH * cfg.model.width)))
        self.g = wrap(Generator(num_classes, self.size, ch=ch).to(device))
        self.d = wrap(Discriminator(num_classes, self.size, ch=ch).to(device))
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=LR_G, betas=BETAS)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=LR_D, betas=BETAS)
        self.model = self.new_model()
        self.opt = make_optimizer(cfg, self.model.parameters())
        self.n_l: torch.Tensor | None = None
        self.real_x, self.real_y = [], []
        self.pool: list[torch.Tensor] | None = None
        self.summary: dict = {}      # what final_report turns into metrics and artifacts

    def gan_epochs(self) -> int:
        return self.cfg.method.gan_balanced.epochs or self.cfg.train.epochs

    def phase(self, epoch):
        return "gan" if epoch < self.gan_epochs() else "supervised"

    def num_epochs(self):
        return self.gan_epochs() + self.cfg.train.epochs

    def start_epoch(self, epoch):
        set_lr(self.opt, max(0, epoch - self.gan_epochs()), self.cfg)

    def _as_patch(self, x: torch.Tensor) -> torch.Tensor:
        """The generator's output in the space of the training patches: z-scores as they come
        (augment.normalize), else squashed to [0, 1] like raw patches."""
        return x if self.cfg.augment.normalize else torch.sigmoid(x)

    def generate(self, y: torch.Tensor) -> torch.Tensor:
        z = torch.randn(len(y), Z_DIM, device=self.device)
        return self._as_patch(self.g(z, y))

    # -- one step ----------------------------------------------------------------------------
    def train_step(self, batch, epoch):
        self.n_l = batch["n_l"].detach().cpu().float()
        if self.phase(epoch) == "gan":
            return self._gan_step(batch)
        if self.pool is None:        # resumed past the GAN stage
            self._make_pool()
        return {"train.loss": self.supervised_step(self.model, self.opt, self._top_up(batch))}

    def _gan_step(self, batch):
        keep = batch["y_l"] >= 0     # multi-label colonies (partial labels) condition nothing
        x, y = batch["x_l"][keep], batch["y_l"][keep]
        self._keep_real(x, y)
        self.g.train()
        self.d.train()
        with torch.no_grad():
            fake = self._as_patch(unwrap(self.g)(torch.randn(len(y), Z_DIM, device=self.device), y))
        logits = self.d(torch.cat([x, fake]), torch.cat([y, y]))
        d_loss = F.relu(1 - logits[:len(y)]).mean() + F.relu(1 + logits[len(y):]).mean()
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        g_loss = -self.d(self.generate(y), y).mean()
        self.opt_g.zero_grad(set_to_none=True)
        self.opt_d.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        self.step_count += 1
        return {"train.gan_d": d_loss.item(), "train.gan_g": g_loss.item()}

    def _keep_real(self, x, y):
        """The most recent REAL_KEEP real patches (for the grid and the realism probe)."""
        self.real_x.append(x.detach().cpu())
        self.real_y.append(y.detach().cpu())
        while sum(len(t) for t in self.real_x) - len(self.real_x[0]) >= REAL_KEEP:
            self.real_x.pop(0)
            self.real_y.pop(0)

    def _top_up(self, batch):
        """Each labeled sample of class c becomes a generated one with probability
        g_c / (n_c + g_c): the balanced real + generated set, drawn class-balanced."""
        x, y = batch["x_l"].clone(), batch["y_l"]
        for c, gen in enumerate(self.pool):
            if not len(gen):
                continue
            share = len(gen) / (len(gen) + float(self.n_l[c]))
            rows = torch.nonzero((y == c) & (torch.rand(len(y), device=y.device) < share)).flatten()
            if len(rows):
                pick = gen[torch.randint(0, len(gen), (len(rows),))].to(x.device)
                flip = torch.rand(len(rows), 2)
                pick = torch.where((flip[:, 0] < 0.5).view(-1, 1, 1, 1).to(x.device),
                                   pick.flip(-1), pick)
                pick = torch.where((flip[:, 1] < 0.5).view(-1, 1, 1, 1).to(x.device),
                                   pick.flip(-2), pick)
                x[rows] = pick.to(x.dtype)
        return {**batch, "x_l": x}

    # -- the balanced set, its grid and realism ------------------------------------------------
    @torch.no_grad()
    def _fake(self, y: torch.Tensor) -> torch.Tensor:
        g = unwrap(self.g)
        was = g.training
        g.eval()
        out = torch.cat([self._as_patch(g(torch.randn(len(c), Z_DIM, device=self.device),
                                             c.to(self.device))).cpu()
                         for c in y.split(256)]) if len(y) else torch.zeros(0, 1, self.size,
                                                                            self.size)
        g.train(was)
        return out

    def _make_pool(self) -> None:
        n = self.n_l if self.n_l is not None else torch.zeros(self.num_classes)
        wanted = [int(min(POOL_CAP, round(float(n.max() - n[c])))) for c in range(self.num_classes)]
        self.pool = [self._fake(torch.full((k,), c)) for c, k in enumerate(wanted)]
        self.summary["generated"] = wanted

    def begin_final_stage(self, pretrained):
        # `pretrained` is the (untrained) classifier of the GAN epochs: nothing to take from it
        self._make_pool()
        if not self.real_x:
            return
        real_x, real_y = torch.cat(self.real_x)[-REAL_KEEP:], torch.cat(self.real_y)[-REAL_KEEP:]
        fake = self._fake(real_y)
        steps = -(-PROBE_EPOCHS * len(real_y) // PROBE_BATCH)
        self.summary["realism_acc"] = probe_accuracy(real_x, fake, steps, batch=PROBE_BATCH)
        self.summary["probe_steps"] = steps
        self.summary["n_probe"] = len(real_y)
        # GRID_COLS real and generated patches per class: all the grid needs, small enough
        # for every checkpoint
        pick = torch.cat([torch.nonzero(real_y == c).flatten()[:GRID_COLS]
                          for c in range(self.num_classes)])
        self.summary["grid"] = (real_x[pick], real_y[pick], fake[pick])

    def final_report(self, classes):
        s = self.summary
        if not s:
            return {}
        metrics = {f"gan.generated.{c}": float(k) for c, k in zip(classes, s["generated"])}
        out = {"metrics": metrics, "artifacts": {}}
        if "realism_acc" in s:
            metrics["gan.realism_acc"] = s["realism_acc"]
            out["artifacts"] = {
                "gan_samples_per_class.png": sample_grid(*s["grid"], classes),
                "gan_realism.json": json.dumps({
                    "check": "a small CNN trained to tell real from generated patches on half "
                             "of them, its accuracy on the other half (0.5 = cannot tell)",
                    "held_out_accuracy": s["realism_acc"], "patches": s["n_probe"],
                    "probe_steps": s["probe_steps"], "generated_per_class": dict(
                        zip(classes, s["generated"]))}, indent=1).encode()}
        return out

    # -- models and checkpoints --------------------------------------------------------------
    def eval_model(self):
        return self.model

    def modules(self):
        return {"g": self.g, "d": self.d, "opt_g": self.opt_g, "opt_d": self.opt_d,
                "model": self.model, "opt": self.opt}

    def extra_state(self):
        return {"n_l": self.n_l, "gan_summary": self.summary}

    def load_extra_state(self, state):
        self.n_l = state.get("n_l")
        self.summary = state.get("gan_summary", {})


def sample_grid(real_x, real_y, fake, classes: list[str]) -> bytes:
    """PNG: one row per class, GRID_COLS real patches then GRID_COLS generated ones."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s = real_x.shape[-1]

    def tile(x):
        x = x[:GRID_COLS, 0].numpy()
        out = np.full((s, GRID_COLS * (s + 2)), np.nan, np.float32)
        for j, p in enumerate(x):
            out[:, j * (s + 2):j * (s + 2) + s] = (p - p.min()) / max(1e-6, float(np.ptp(p)))
        return out

    num_classes = len(classes)
    fig, axes = plt.subplots(num_classes, 2, squeeze=False,
                             figsize=(2 * GRID_COLS * 0.45, num_classes * 0.6 + 0.6))
    for c in range(num_classes):
        sel = real_y == c
        for k, (x, what) in enumerate(((real_x[sel], "real"), (fake[sel], "generated"))):
            ax = axes[c, k]
            ax.imshow(tile(x) if len(x) else np.full((s, s), np.nan), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_title(what, fontsize=8)
        axes[c, 0].set_ylabel(classes[c], fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle("gan_balanced: real vs generated patches per class", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
