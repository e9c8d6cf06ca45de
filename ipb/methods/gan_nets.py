"""The small conditional GAN of `gan_balanced` and its realism probe.

    python -c "from ipb.methods.gan_nets import Generator; print(Generator(4, 48))"

Generator: noise z and the class (one-hot) -> a linear layer to a S0 x S0 map -> DCGAN's
stride-2 transposed convolutions with BN + ReLU (channels halving) up to the patch size -> one
grey channel, unbounded: the patches it imitates are per-patch z-scores (augment.normalize;
gan_balanced squashes it to [0, 1] otherwise); a tanh output z-scored again per patch gave
one image for every class and noise on the smoke data. Discriminator: stride-2 convolutions
with LeakyReLU and spectral normalisation (no BN: real and generated patches go through it in
one batch) down to <= 4 px, summed over space, then a projection head (Miyato & Koyama 2018):
linear(h) + <embed(class), h>. The probe: a small CNN
trained from scratch to tell held-in real from generated patches, tested on held-out ones.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

Z_DIM = 64
G_CH = 16         # channels at the patch size (doubling toward the stem, at most 8x), G and D


def stem(size: int) -> tuple[int, int]:
    """(S0, k): k stride-2 stages from an S0 x S0 map (3 <= S0 <= 6) cover `size`."""
    k = max(1, int(math.floor(math.log2(size / 3))))
    return int(math.ceil(size / 2 ** k)), k


class Generator(nn.Module):
    def __init__(self, num_classes: int, size: int, z_dim: int = Z_DIM, ch: int = G_CH):
        super().__init__()
        self.num_classes, self.size, self.z_dim = num_classes, size, z_dim
        self.s0, k = stem(size)
        chans = [ch * 2 ** min(i, 3) for i in range(k, -1, -1)]
        self.fc = nn.Sequential(nn.Linear(z_dim + num_classes, chans[0] * self.s0 ** 2),
                                nn.BatchNorm1d(chans[0] * self.s0 ** 2), nn.ReLU(inplace=True))
        ups = []
        for a, b in zip(chans[:-1], chans[1:]):
            ups += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b),
                    nn.ReLU(inplace=True)]
        self.ups = nn.Sequential(*ups)
        self.out = nn.Conv2d(chans[-1], 1, 3, padding=1)
        self.c0 = chans[0]

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B, 1, size, size) unbounded patches."""
        h = self.fc(torch.cat([z, F.one_hot(y, self.num_classes).to(z.dtype)], dim=1))
        x = self.out(self.ups(h.view(len(z), self.c0, self.s0, self.s0)))
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return x


class Discriminator(nn.Module):
    def __init__(self, num_classes: int, size: int, ch: int = G_CH):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        layers, c_in, s = [], 1, size
        c = ch
        while s > 4:
            layers += [sn(nn.Conv2d(c_in, c, 4, 2, 1)), nn.LeakyReLU(0.2, inplace=True)]
            c_in, c, s = c, min(c * 2, ch * 8), s // 2
        self.features = nn.Sequential(*layers)
        self.linear = sn(nn.Linear(c_in, 1))
        self.embed = sn(nn.Embedding(num_classes, c_in))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.features(x).sum(dim=(2, 3))
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)


class Probe(nn.Module):
    """Real (1) vs generated (0): two stride-2 convolutions, pooled, linear."""

    def __init__(self, ch: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, ch, 3, 2, 1), nn.ReLU(inplace=True),
                                 nn.Conv2d(ch, 2 * ch, 3, 2, 1), nn.ReLU(inplace=True),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * ch, 1))

    def forward(self, x):
        return self.net(x).squeeze(1)


def probe_accuracy(real: torch.Tensor, fake: torch.Tensor, steps: int, lr: float = 1e-3,
                   batch: int = 64) -> float:
    """Held-out accuracy of a Probe trained on the first halves of `real` and `fake`: 0.5 =
    the probe cannot tell them apart, 1.0 = it always can."""
    n = min(len(real), len(fake)) // 2
    if n < 2:
        return float("nan")
    probe = Probe().to(real.device)
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    x = torch.cat([real[:n], fake[:n]])
    y = torch.cat([torch.ones(n), torch.zeros(n)]).to(real.device)
    for _ in range(steps):
        idx = torch.randint(0, 2 * n, (min(batch, 2 * n),))
        loss = F.binary_cross_entropy_with_logits(probe(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    probe.eval()
    with torch.no_grad():
        xt = torch.cat([real[n:2 * n], fake[n:2 * n]])
        yt = torch.cat([torch.ones(n), torch.zeros(n)]).to(real.device)
        return float(((probe(xt) > 0).float() == yt).float().mean())
