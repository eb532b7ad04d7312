"""The network definitions: shapes, the attention formulas, gradients and the paper's counts."""

from __future__ import annotations

import pytest
import torch

import resattn
from resattn.attention import CHANNEL_EPS, MaskActivation

ATTENTION_NAMES = [n for n in resattn.list_models() if n.startswith("attention")]


def test_registry_lists_every_depth_and_the_baseline():
    names = resattn.list_models()
    for depth in (56, 92, 128, 164, 236, 452):
        assert f"attention{depth}_cifar" in names
        assert f"attention{depth}_imagenet" in names
    assert "resnet164_cifar" in names
    with pytest.raises(ValueError, match="unknown model"):
        resattn.create_model("attention57_cifar")
    with pytest.raises(TypeError, match="unknown override"):
        resattn.create_model("attention56_cifar", colour="blue")


@pytest.mark.parametrize("name", resattn.list_models())
def test_shapes_at_native_and_odd_sizes(name):
    # width_mult only scales channels; the topology (pools, resizes, strides) is the full model's.
    model = resattn.create_model(name, width_mult=0.125, num_classes=7).eval()
    sizes = [(224, 224), (200, 176), (97, 131)] if name.endswith("imagenet") else [(32, 32), (40, 36), (17, 23)]
    with torch.no_grad():
        for h, w in sizes:
            assert model(torch.randn(2, 3, h, w)).shape == (2, 7)


def test_depth_follows_36m_plus_20():
    for depth in (56, 92, 128, 164, 236, 452):
        assert resattn.model_config(f"attention{depth}_cifar").depth == depth
        assert resattn.model_config(f"attention{depth}_imagenet").depth == depth
    assert resattn.model_config("attention92_imagenet").modules == (1, 2, 3)
    assert resattn.model_config("attention92_cifar").modules == (2, 2, 2)
    cfg = resattn.model_config("attention452_cifar")
    assert (cfg.p, cfg.t, cfg.r) == (2, 4, 3)


def test_mask_branch_unit_counts_match_the_official_wiring():
    # 2rk + k − 1 units in a k-pool mask: 8 / 5 / 2 for ImageNet stages A / B / C (paper-spec §1.3).
    model = resattn.create_model("attention56_imagenet")
    counts = [sum(isinstance(m, resattn.PreActBottleneck) for m in mod.mask.modules()) for mod in model.attention_modules()]
    assert counts == [8, 5, 2]
    per_module = [sum(isinstance(m, resattn.PreActBottleneck) for m in mod.modules()) for mod in model.attention_modules()]
    assert per_module == [12, 9, 6]


def test_overrides_reach_every_module():
    model = resattn.create_model("attention92_cifar", attention="spatial", learning="nal", mask="local", width_mult=0.25)
    modules = model.attention_modules()
    assert len(modules) == 6
    assert all(m.activation.kind == "spatial" and m.learning == "nal" for m in modules)
    assert all(isinstance(m.mask, resattn.LocalMask) for m in modules)
    grey = resattn.create_model("attention56_imagenet", width_mult=0.125, in_chans=1, num_classes=4, modules=(1, 0, 2)).eval()
    assert len(grey.attention_modules()) == 3
    with torch.no_grad():
        assert grey(torch.randn(1, 1, 64, 64)).shape == (1, 4)
    for bad in ({"attention": "soft"}, {"learning": "xyz"}, {"mask": "round"}):
        with pytest.raises(ValueError):
            resattn.create_model("attention56_cifar", **bad)


def test_arl_with_zero_mask_is_the_trunk(tiny_cifar):
    trace = resattn.knockout(tiny_cifar, torch.randn(2, 3, 32, 32), stage=2, index=1, mode="zero")
    record = trace.module(2, 1)
    assert torch.count_nonzero(record.mask) == 0
    torch.testing.assert_close(record.output, record.trunk)
    # and a module that was not knocked out still applies its mask
    other = trace.module(1, 1)
    assert not torch.allclose(other.output, other.trunk)


def test_channel_activation_has_unit_norm_at_each_position():
    x = torch.randn(3, 16, 5, 7) * 4
    m = MaskActivation("channel")(x)
    torch.testing.assert_close(m.norm(dim=1), torch.ones(3, 5, 7), atol=1e-5, rtol=0)
    assert m.min() >= -1 and m.max() <= 1
    # the epsilon only guards the zero vector
    assert torch.all(MaskActivation("channel")(torch.zeros(1, 4, 2, 2)) == 0)
    assert CHANNEL_EPS < 1e-3


def test_spatial_activation_standardises_each_channel_over_positions():
    x = torch.randn(2, 8, 6, 9) * 3 + 5
    z = MaskActivation.standardize(x)
    torch.testing.assert_close(z.mean(dim=(-2, -1)), torch.zeros(2, 8), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(dim=(-2, -1), unbiased=False), torch.ones(2, 8), atol=1e-4, rtol=0)
    m = MaskActivation("spatial")(x)
    torch.testing.assert_close(torch.logit(m), z, atol=1e-4, rtol=1e-4)
    # per sample: the mask of one image does not depend on the others in the batch
    torch.testing.assert_close(MaskActivation("spatial")(x[:1]), m[:1])


def _adversarial_logits() -> list[torch.Tensor]:
    """Mask logits chosen to push the statistics: skewed (one hot spot per channel, exponential tails), two-valued
    at the spot where the mean of σ(z) is furthest from ½, all-equal-sign channels, and plain noise."""
    gen = torch.Generator().manual_seed(0)
    spot = torch.full((1, 16, 6, 6), -1.0)
    spot[:, :, 0, 0] = 35.0
    two = torch.zeros(1, 16, 10, 10)
    two.view(1, 16, -1)[:, :, :6] = 1.0  # 6% at one value, the rest at another: near the extreme of the mean
    return [torch.randn(2, 16, 6, 6, generator=gen), torch.empty(2, 16, 6, 6).exponential_(generator=gen) * 5,
            spot, two, torch.rand(2, 16, 6, 6, generator=gen) + 3.0, -torch.rand(2, 16, 6, 6, generator=gen) - 3.0]


def test_what_the_spatial_and_channel_activations_fix_about_the_mask_statistics():
    """The bounds :data:`FIXED_BY_ACTIVATION` states (the Compare page shows them beside the statistics)."""
    from resattn.attention import FIXED_BY_ACTIVATION

    for x in _adversarial_logits():
        spatial = MaskActivation("spatial")(x)
        above_mean = (x > x.mean(dim=(-2, -1), keepdim=True)).float()
        assert torch.equal((spatial > 0.5).float().mean(dim=(-2, -1)), above_mean.mean(dim=(-2, -1)))
        assert (spatial.mean(dim=(-2, -1)) - 0.5).abs().max() <= 0.0332
        channel = MaskActivation("channel")(x)
        c = x.shape[1]
        assert (channel > 0.5).sum(dim=1).max() <= 3 and float((channel > 0.5).float().mean()) <= 3 / c
        assert channel.mean(dim=1).abs().max() <= 1 / c**0.5 + 1e-6
    # the two-valued logits come within a hair of the spatial bound: it is tight, not loose
    assert (MaskActivation("spatial")(_adversarial_logits()[3]).mean() - 0.5).abs() > 0.03
    assert "0.5 ± 0.034" in FIXED_BY_ACTIVATION["spatial"] and "at most 3/C" in FIXED_BY_ACTIVATION["channel"]
    assert "above its channel's mean" in FIXED_BY_ACTIVATION["spatial"] and "±1/√C" in FIXED_BY_ACTIVATION["channel"]


def test_mixed_activation_is_the_sigmoid():
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(MaskActivation("mixed")(x), torch.sigmoid(x))


@pytest.mark.parametrize("attention", ["mixed", "channel", "spatial"])
def test_nal_and_arl_follow_their_formulas(attention):
    x = torch.randn(2, 3, 32, 32)
    for learning, formula in (("arl", lambda m, t: (1 + m) * t), ("nal", lambda m, t: m * t)):
        torch.manual_seed(1)
        model = resattn.create_model("attention56_cifar", width_mult=0.25, attention=attention, learning=learning)
        for record in resattn.inspect(model, x).modules:
            torch.testing.assert_close(record.output, formula(record.mask, record.trunk))
    torch.manual_seed(1)
    arl = resattn.create_model("attention56_cifar", width_mult=0.25, attention=attention, learning="arl").eval()
    torch.manual_seed(1)
    nal = resattn.create_model("attention56_cifar", width_mult=0.25, attention=attention, learning="nal").eval()
    with torch.no_grad():
        assert not torch.allclose(arl(x), nal(x))


@pytest.mark.parametrize("name", ["attention56_cifar", "resnet164_cifar"])
def test_every_parameter_receives_a_gradient(name):
    torch.manual_seed(0)
    model = resattn.create_model(name, width_mult=0.25).train()
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_activations_are_separate_modules():
    model = resattn.create_model("attention56_cifar", width_mult=0.25)
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    assert len({id(m) for m in relus}) == len(relus) > 10
    assert not any(m.inplace for m in relus)


PAPER_COUNTS = [
    # name, input, reference params (M), reference MACs (G) or None, our tolerance on params, on MACs
    ("attention56_imagenet", 224, 31.8, 6.27, 0.005, 0.005),  # official prototxt recount; paper 31.9M, 6.2G / 6.3G
    ("attention92_imagenet", 224, 52.5, 10.53, 0.005, 0.005),  # official prototxt recount; paper 51.3M / 10.4G
    ("attention92_cifar", 32, 1.75, None, 0.05, None),  # reconstruction estimate; the paper prints 1.9M
    ("resnet164_cifar", 32, 1.7, None, 0.02, None),  # Table 6
]


@pytest.mark.parametrize("name,size,params,macs,ptol,mtol", PAPER_COUNTS)
def test_counts_against_the_paper(name, size, params, macs, ptol, mtol):
    model = resattn.create_model(name)
    assert resattn.count_params(model) / 1e6 == pytest.approx(params, rel=ptol)
    if macs is not None:
        assert resattn.count_macs(model, size) / 1e9 == pytest.approx(macs, rel=mtol)


def test_attention56_imagenet_macs_lie_in_the_papers_range():
    macs = resattn.count_macs(resattn.create_model("attention56_imagenet"), 224) / 1e9
    assert 6.2 <= macs <= 6.3
