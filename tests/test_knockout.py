"""Mask knock-outs: another image's mask for one image (resattn.knockout), and every module × replacement over a
dataset (resattn.faithfulness.knockout_over_dataset and its command), checked against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import resattn
from resattn import faithfulness as F

from .test_masks import META, checkpoint, dataset  # noqa: F401 - module-scoped fixtures reused here


def test_knockout_with_another_images_mask(tiny_cifar):
    torch.manual_seed(4)
    x, y = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    swapped = resattn.knockout(tiny_cifar, x, 2, 1, "other", other=y)
    record = swapped.module(2, 1)
    torch.testing.assert_close(record.mask, resattn.inspect(tiny_cifar, y).module(2, 1).mask)  # y's mask, used on x
    torch.testing.assert_close(record.computed_mask, resattn.inspect(tiny_cifar, x).module(2, 1).mask)
    assert record.knockout == "other" and swapped.module(1, 1).knockout is None
    torch.testing.assert_close(record.output, tiny_cifar.stage2.module1.combine(record.mask, record.trunk))
    assert not torch.allclose(swapped.logits, resattn.inspect(tiny_cifar, x).logits)
    # the image's own mask as "another image's" changes nothing: the replacement is exactly the mask it computes
    torch.testing.assert_close(resattn.knockout(tiny_cifar, x, 2, 1, "other", other=x).logits,
                               resattn.inspect(tiny_cifar, x).logits)
    # one other image serves a whole batch
    one = resattn.knockout(tiny_cifar, x, 2, 1, "other", other=y[:1])
    torch.testing.assert_close(one.module(2, 1).mask[1], resattn.inspect(tiny_cifar, y[:1]).module(2, 1).mask[0])
    for bad in (None, y[:, :, :16], torch.randn(3, 3, 32, 32)):
        with pytest.raises(ValueError, match="other"):
            resattn.knockout(tiny_cifar, x, 2, 1, "other", other=bad)


def _images(n: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    return (torch.from_numpy(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)),
            torch.from_numpy(rng.integers(0, 10, n)))


def test_knockout_over_a_dataset_equals_one_image_at_a_time(tiny_cifar):
    images, labels = _images()
    result = F.knockout_over_dataset(tiny_cifar, META, images, labels, modes=("zero", "mean", "other"), seed=2,
                                     batch_size=3)  # batches of 3, 3, 1: "other" images cross batch boundaries
    assert [(e.stage, e.index, e.mode) for e in result.effects] == [
        (s, 1, m) for s in (1, 2, 3) for m in ("zero", "mean", "other")]
    prep = resattn.preprocess.Preprocessing.from_meta(META)
    x = prep.normalize(images)
    intact = resattn.inspect(tiny_cifar, x).logits
    np.testing.assert_allclose(result.intact_logits, intact.numpy(), atol=1e-5)
    perm = F.derangement(len(images), seed=2)
    truth = labels.numpy()
    rows = np.arange(len(images))
    for effect in result.effects:
        direct = torch.cat([resattn.knockout(tiny_cifar, x[i : i + 1], effect.stage, effect.index, effect.mode,
                                             other=x[perm[i] : perm[i] + 1] if effect.mode == "other" else None).logits
                            for i in range(len(images))]).numpy()
        np.testing.assert_allclose(result.logits[(effect.stage, effect.index, effect.mode)], direct, atol=1e-4)
        delta = direct[rows, truth] - intact.numpy()[rows, truth]
        assert effect.logit.mean == pytest.approx(delta.mean(), abs=1e-4)
        assert effect.accuracy.rate_a == pytest.approx(np.mean(intact.numpy().argmax(1) == truth))
        assert effect.accuracy.rate_b == pytest.approx(np.mean(direct.argmax(1) == truth))
        assert effect.changed == pytest.approx(np.mean(direct.argmax(1) != intact.numpy().argmax(1)))
    assert "another image's mask" in result.table() and "stage 3, module 1" in result.table()


def test_knockouts_that_change_nothing_measure_nothing(tiny_cifar):
    """With every image a copy of one image, another image's mask is the image's own: no change, p = 1."""
    images, labels = _images(1)
    images, labels = images.repeat(4, 1, 1, 1), labels.repeat(4)
    result = F.knockout_over_dataset(tiny_cifar, META, images, labels, modules=[(2, 1)], modes=("other", "one"))
    other, one = result.effects
    assert other.logit.mean == pytest.approx(0, abs=1e-5) and other.changed == 0 and other.accuracy.p_mcnemar == 1
    assert abs(one.logit.mean) > 1e-3  # M = 1 does change the logits
    with pytest.raises(ValueError, match="knock-outs"):
        F.knockout_over_dataset(tiny_cifar, META, images, labels, modes=("half",))


def test_knockout_command(tmp_path, checkpoint, dataset, capsys):  # noqa: F811 - fixtures
    assert F.main(["knockout", "--checkpoint", str(checkpoint), "--data", str(dataset), "--limit", "6",
                   "--modules", "2.1", "3", "--no-progress", "--out", str(tmp_path / "k.npz")]) == 0
    out = capsys.readouterr().out
    assert "mask knock-out over 6 images" in out and out.count("stage 2, module 1") == 4
    with np.load(tmp_path / "k.npz") as z:
        assert z["index"].tolist() == [0, 2, 4, 6, 8, 10] and z["stage3_module1/other"].shape == (6, 3)
        assert z["labels"].tolist() == [0, 0, 1, 1, 2, 2]  # spread over the class-sorted split
