"""Deletion / insertion on a model whose evidence is known, and the randomisation cascade on a tiny network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import resattn
from resattn import faithfulness as F

from .test_masks import META, checkpoint, dataset  # noqa: F401 - module-scoped fixtures reused here


class TopLeft(nn.Module):
    """Two classes; the logit of class 0 reads only the top-left quadrant's mean squared intensity."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(8.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        energy = x[:, :, : h // 2, : w // 2].pow(2).mean(dim=(1, 2, 3))
        return torch.stack([self.scale * energy - 4, torch.zeros_like(energy)], dim=1)


@pytest.fixture
def toy():
    """The toy model and an image whose top-left quadrant is a ±1 checkerboard (a blur wipes it out)."""
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    x = ((yy + xx) % 2 * 2 - 1).float().expand(1, 3, 32, 32).clone()
    return TopLeft().eval(), x


def region_first(size=32) -> np.ndarray:
    m = np.zeros((size, size), np.float32)
    m[: size // 2, : size // 2] = 1
    return m


def test_region_first_map_beats_random_on_a_model_with_known_evidence(toy):
    model, x = toy
    maps = {"region": region_first(), "random": F.random_map((32, 32), seed=0), "inverse": 1 - region_first()}
    curves = F.faithfulness_curves(model, x, 0, maps, steps=16)
    auc = {n: {k: c.auc for k, c in v.items()} for n, v in curves.items()}
    assert auc["region"]["deletion"] < auc["random"]["deletion"] < auc["inverse"]["deletion"]
    assert auc["region"]["insertion"] > auc["random"]["insertion"] > auc["inverse"]["insertion"]
    # region first: the evidence is gone after a quarter of the pixels, and fully back after a quarter
    deletion, insertion = curves["region"]["deletion"], curves["region"]["insertion"]
    assert deletion.probabilities[4] == pytest.approx(torch.sigmoid(torch.tensor(-4.0)).item(), abs=1e-6)
    assert insertion.probabilities[4] == pytest.approx(torch.sigmoid(torch.tensor(4.0)).item(), abs=1e-6)


def test_curves_are_ordered_in_fraction_and_aucs_lie_in_0_1(toy):
    model, x = toy
    steps = 10
    deletion, insertion = F.deletion_insertion(model, x, 0, F.random_map((32, 32), 3), steps)
    p_full = torch.softmax(model(x), 1)[0, 0].item()
    p_base = torch.softmax(model(torch.zeros_like(x)), 1)[0, 0].item()
    p_blur = torch.softmax(model(F.gaussian_blur(x, 2.0)), 1)[0, 0].item()
    for curve in (deletion, insertion):
        assert curve.fractions.shape == curve.probabilities.shape == (steps + 1,)
        assert curve.fractions[0] == 0 and curve.fractions[-1] == 1 and np.all(np.diff(curve.fractions) > 0)
        assert 0 <= curve.auc <= 1
        assert curve.auc == pytest.approx(np.trapezoid(curve.probabilities, curve.fractions)
                                          if hasattr(np, "trapezoid") else np.trapz(curve.probabilities, curve.fractions))
    assert deletion.probabilities[0] == pytest.approx(p_full) and deletion.probabilities[-1] == pytest.approx(p_base)
    assert insertion.probabilities[0] == pytest.approx(p_blur) and insertion.probabilities[-1] == pytest.approx(p_full)


def test_low_resolution_maps_are_upsampled_and_the_blur_keeps_flat_images():
    coarse = np.zeros((4, 4), np.float32)
    coarse[0, 0] = 1
    order = F.pixel_order(coarse, (32, 32))
    first = np.unravel_index(order[:16], (32, 32))
    assert first[0].max() < 8 and first[1].max() < 8  # the top-left 8×8 block comes first
    flat = torch.full((1, 3, 16, 16), 0.7)
    assert torch.allclose(F.gaussian_blur(flat, 3.0), flat)
    noisy = torch.randn(1, 3, 32, 32)
    assert F.gaussian_blur(noisy, 2.0).std() < 0.5 * noisy.std()
    assert F.blur_sigma_for((32, 32)) == 2.0


def test_saliency_maps_and_dataset_summary(tiny_cifar):
    torch.manual_seed(2)
    x, other = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    maps = F.saliency_maps(tiny_cifar, x, target=1, stage=2, ig_steps=4, other=other)
    assert list(maps) == list(F.DELETION_MAPS)
    assert all(m.shape == (32, 32) and np.isfinite(m).all() for m in maps.values())
    assert np.array_equal(maps["random"], F.random_map((32, 32), 0))
    assert np.unravel_index(maps["centre"].argmax(), (32, 32)) in {(15, 15), (15, 16), (16, 15), (16, 16)}
    mask16 = resattn.inspect(tiny_cifar, x).module(2).mask[0].mean(0).numpy()
    np.testing.assert_allclose(maps["mask"], resattn.maps.upsample(mask16, (32, 32)), atol=1e-6)

    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    result = F.faithfulness_over_dataset(tiny_cifar, META, images, torch.tensor([0, 1, 2]), stage=2,
                                         names=("mask", "random", "centre"), steps=4, ig_steps=4)
    assert result.deletion["mask"].shape == result.insertion["random"].shape == (3, 5)
    summary = result.summary()
    for name in ("mask", "random", "centre"):
        for kind in ("deletion", "insertion"):
            aucs = result.aucs(kind)[name]
            assert ((aucs >= 0) & (aucs <= 1)).all()
            assert summary[name][f"{kind}_mean"] == pytest.approx(aucs.mean())
            assert summary[name][f"{kind}_sem"] == pytest.approx(aucs.std(ddof=1) / np.sqrt(3))
    assert "centre prior" in result.table()


def _perturbed_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """Give every parameter and BN statistic a value that no re-initialisation can reproduce."""
    torch.manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.add_(0.1)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_cascade_leaves_the_model_untouched_and_grows_stage_by_stage(tiny_cifar):
    original = _perturbed_copy(tiny_cifar)
    steps = list((name, tuple(done), {k: v.clone() for k, v in net.state_dict().items()})
                 for name, net, done in F.randomisation_cascade(tiny_cifar, seed=0))
    assert [name for name, _, _ in steps] == ["fc", "norm", "stage3", "stage2", "stage1", "stem"]  # no CIFAR tail
    previous: set[str] = set()
    for name, done, state in steps:
        done_set = set(done)
        assert previous < done_set and all(k.startswith(name + ".") for k in done_set - previous)
        changed = {k for k in state if not torch.equal(state[k], original[k])}
        assert changed == done_set  # exactly the re-initialised tensors differ from the trained ones
        previous = done_set
    assert previous == set(original)  # in the end every tensor was re-initialised
    for k, v in tiny_cifar.state_dict().items():
        assert torch.equal(v, original[k]), k
    assert not tiny_cifar.training
    # seeded: a second cascade draws the same weights
    again = [net.state_dict()["stage2.module1.trunk.0.conv1.weight"].clone()
             for _, net, _ in F.randomisation_cascade(tiny_cifar, seed=0)]
    assert torch.equal(again[3], steps[3][2]["stage2.module1.trunk.0.conv1.weight"])


def test_sanity_check_mask_changes_only_with_its_own_stage(tiny_cifar):
    _perturbed_copy(tiny_cifar)
    before = {k: v.clone() for k, v in tiny_cifar.state_dict().items()}
    torch.manual_seed(3)
    x = torch.randn(1, 3, 32, 32)
    result = F.sanity_check(tiny_cifar, x, target=2, stage=2, names=("mask", "gradcam"))
    blocks = [s.block for s in result.steps]
    assert blocks == ["trained", "fc", "norm", "stage3", "stage2", "stage1", "stem"]
    trained = result.steps[0]
    assert trained.spearman["mask"] == pytest.approx(1.0) and trained.ssim["gradcam"] == pytest.approx(1.0)
    for step in result.steps[1:4]:  # fc, norm, stage3 sit above stage 2: its mask cannot change
        assert np.array_equal(step.maps["mask"], trained.maps["mask"])
    assert result.steps[4].spearman["mask"] < 0.99  # stage 2 re-initialised: the mask changes
    assert not np.allclose(result.steps[1].maps["gradcam"], trained.maps["gradcam"])  # class-specific
    for step in result.steps:
        for n in ("mask", "gradcam"):
            assert np.isnan(step.spearman[n]) or -1 <= step.spearman[n] <= 1
            assert np.isnan(step.ssim[n]) or -1 <= step.ssim[n] <= 1 + 1e-9
    for k, v in tiny_cifar.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert "stage3" in result.table()


def test_ssim_matches_scikit_image_and_rank_correlation_handles_constants():
    rng = np.random.default_rng(0)
    a = rng.random((32, 32))
    b = a + 0.3 * rng.random((32, 32))
    assert F.ssim(a, a) == pytest.approx(1.0)
    pytest.importorskip("skimage")
    assert F._ssim(F._unit(a), F._unit(b), 7) == pytest.approx(F.ssim(a, b), abs=1e-9)
    assert F.rank_correlation(a, 2 * a + 1) == pytest.approx(1.0)
    # ranks, not values: a monotone but far from linear transform keeps ρ = 1 (Pearson's r would be well below 1)
    assert F.rank_correlation(a, np.exp(12 * a)) == pytest.approx(1.0)
    assert F.rank_correlation(a, -np.exp(12 * a)) == pytest.approx(-1.0)
    assert resattn.attribution.spearman(a, np.exp(12 * a)) == pytest.approx(1.0)  # the app's mask-vs-map agreement
    assert np.corrcoef(a.ravel(), np.exp(12 * a).ravel())[0, 1] < 0.8  # so this input tells the two apart
    assert np.isnan(F.rank_correlation(a, np.ones_like(a))) and np.isnan(F.ssim(a, np.ones_like(a)))


def test_cli_deletion_and_sanity(tmp_path, checkpoint, dataset, capsys):  # noqa: F811 - fixtures
    assert F.main(["deletion", "--checkpoint", str(checkpoint), "--data", str(dataset), "--limit", "2", "--stage", "2",
                   "--steps", "4", "--ig-steps", "4", "--no-progress", "--out", str(tmp_path / "d.npz")]) == 0
    out = capsys.readouterr().out
    assert "over 2 images" in out and "Grad-CAM" in out and "centre prior" in out
    with np.load(tmp_path / "d.npz") as z:
        assert z["deletion/mask"].shape == (2, 5) and z["index"].tolist() == [0, 6]
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(image)
    assert F.main(["sanity", "--checkpoint", str(checkpoint), "--image", str(image), "--stage", "3",
                   "--maps", "mask", "gradcam", "--out", str(tmp_path / "s.npz")]) == 0
    out = capsys.readouterr().out
    assert "re-initialised down to" in out and "stem" in out
    with np.load(tmp_path / "s.npz") as z:
        assert z["trained/mask"].shape == (32, 32) and "stem/gradcam" in z.files
