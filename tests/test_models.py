"""Model registry and networks: pytest tests/test_models.py -s (-s shows the parameter table)."""
from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn as nn

from ipb.models import create_model, list_models, model_info, register_model
from ipb.models.common import centre_half

PAPER_NAMES = {"vgg19", "ms_vgg19", "hrnet_w18", "ms_hrnet_w18"}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@functools.lru_cache(maxsize=None)
def count(name: str, width: float) -> int:
    return n_params(create_model(name, 4, width=width))


def test_registry_holds_the_paper_models():
    assert PAPER_NAMES <= set(list_models())
    for name in list_models():
        info = model_info(name)
        assert info["family"] in ("vgg", "hrnet", "small")
        assert info["multi_scale"] == name.startswith("ms_")
        assert info["min_size"] >= (16 if info["family"] == "small" else 32)
        # a network of the paper carries its parameter count; the CPU-study one does not
        assert (info["paper_params"] > 0) == (name in PAPER_NAMES)


def test_small_cnn_is_small_and_takes_48px_patches():
    """The CPU-study network: a few hundred thousand parameters at width 1, 48 px in."""
    assert 2e5 <= count("small_cnn", 1.0) <= 5e5
    logits, emb = create_model("small_cnn", 4)(torch.zeros(2, 1, 48, 48))
    assert logits.shape == (2, 4) and emb.shape == (2, 128)


@pytest.mark.parametrize("name", list_models())
def test_tiny_forward_backward(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, width=0.125)
    assert model.multi_scale == model_info(name)["multi_scale"]
    assert model.num_classes == 3
    x = torch.randn(2, 1, 64, 64)
    model.train()
    logits, embedding = model(x)
    assert logits.shape == (2, 3) and embedding.shape == (2, model.embed_dim)
    assert torch.isfinite(logits).all() and torch.isfinite(embedding).all()
    (logits.logsumexp(1).sum() + embedding.square().mean()).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
    model.eval()
    with torch.no_grad():
        logits, embedding = model(x[:1])
    assert logits.shape == (1, 3) and embedding.shape == (1, model.embed_dim)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", list_models())
def test_smallest_input(name):
    size = model_info(name)["min_size"]
    model = create_model(name, num_classes=4, width=0.125).train()
    logits, _ = model(torch.randn(2, 1, size, size))
    assert logits.shape == (2, 4)
    # odd sides and the smoke profile's 48 px patch, where HRNet branches are not powers of 2
    other = size + 16 if model_info(name)["multi_scale"] else 48
    assert model(torch.randn(2, 1, other, other))[0].shape == (2, 4)
    with pytest.raises(ValueError, match="at least"):
        model(torch.randn(2, 1, size - 2, size - 2))
    with pytest.raises(ValueError, match="expects"):
        model(torch.randn(2, 3, size, size))


@pytest.mark.parametrize("name", [n for n in list_models() if model_info(n)["multi_scale"]])
def test_multi_scale_small_stream_sees_the_centre(name):
    model = create_model(name, num_classes=4, width=0.125).eval()
    seen = {}
    model.small.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0]))
    x = torch.randn(1, 1, 96, 96)
    with torch.no_grad():
        model(x)
    assert torch.equal(seen["x"], x[..., 24:72, 24:72])


def test_centre_half_rejects_odd_sides():
    assert centre_half(torch.zeros(1, 1, 8, 8)).shape == (1, 1, 4, 4)
    with pytest.raises(ValueError, match="even"):
        centre_half(torch.zeros(1, 1, 9, 9))


def test_full_width_parameter_counts_match_the_paper():
    rows = []
    for name in sorted(PAPER_NAMES):
        ours, paper = count(name, 1.0), model_info(name)["paper_params"]
        rows.append((name, ours, paper, count(name, 0.125)))
        print(f"{name:14s} ours {ours / 1e6:7.3f} M  paper {paper / 1e6:5.1f} M  "
              f"ratio {ours / paper:5.3f}  width 0.125: {count(name, 0.125) / 1e3:7.1f} k")
    for name, ours, paper, _ in rows:
        assert abs(ours / paper - 1) <= 0.10, f"{name}: {ours} params vs paper {paper}"


def test_hrnet_trunk_matches_timm_hrnet_w18():
    timm = pytest.importorskip("timm")
    reference = timm.create_model("hrnet_w18", pretrained=False, in_chans=1, num_classes=0)
    ours = create_model("hrnet_w18", 4)
    assert n_params(ours.trunk) == n_params(reference)


@pytest.mark.parametrize("name", sorted(PAPER_NAMES))
def test_width_shrinks_the_model(name):
    assert count(name, 0.125) <= count(name, 0.25) < count(name, 1.0)


def test_init_kaiming_and_batchnorm():
    model = create_model("vgg19", 4, width=0.25)
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1)
    expected = math.sqrt(2.0 / (conv.out_channels * 9))
    assert abs(conv.weight.std().item() / expected - 1) < 0.15
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


def test_unknown_name_and_bad_arguments():
    with pytest.raises(ValueError) as err:
        create_model("resnet9000", 4)
    for name in list_models():
        assert name in str(err.value)
    with pytest.raises(ValueError, match="registered"):
        model_info("resnet9000")
    with pytest.raises(ValueError, match="width"):
        create_model("vgg19", 4, width=0.0)
    with pytest.raises(ValueError, match="num_classes"):
        create_model("vgg19", 0)
    with pytest.raises(ValueError, match="dropout"):
        create_model("vgg19", 4, dropout=1.0)


def test_register_model_rejects_duplicates():
    with pytest.raises(ValueError, match="twice"):
        @register_model(family="vgg", multi_scale=False, min_size=32, paper_params=1.0)
        def vgg19(num_classes, width=1.0, dropout=0.5, in_chans=1):  # noqa: F811
            raise AssertionError("never built")


@pytest.mark.parametrize("name", list_models())
def test_dropout_argument_reaches_the_classifier(name):
    x = torch.randn(4, 1, 64, 64)
    outputs = {}
    for p in (0.0, 0.5):
        torch.manual_seed(0)
        model = create_model(name, 4, width=0.125, dropout=p).train()
        with torch.no_grad():
            outputs[p] = (model(x)[0], model(x)[0])
    assert torch.allclose(*outputs[0.0])
    assert not torch.allclose(*outputs[0.5])
