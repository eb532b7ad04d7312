"""resattn.confidence: the unsure-prediction threshold flags at most its share of the test images, at the
boundary; an entry is used only for the exact file it was measured on."""

from __future__ import annotations

import numpy as np
import pytest

from resattn import confidence as C


def test_the_threshold_flags_at_most_the_share_and_as_many_as_it_may():
    top = np.linspace(0.1, 1.0, 100)  # 100 distinct probabilities
    threshold, flagged = C.threshold_for(top, 0.05)
    assert flagged == pytest.approx(0.05) and np.mean(top < threshold) == flagged
    assert np.mean(top < np.nextafter(threshold, 2)) > 0.05  # one step higher flags one image too many


def test_ties_at_the_threshold_are_not_flagged_beyond_the_share():
    top = np.array([0.2] * 10 + [0.9] * 90)  # 10% share one value
    threshold, flagged = C.threshold_for(top, 0.05)
    assert flagged <= 0.05 and threshold == 0.2  # flagging the tie would flag 10%


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="no probabilities"):
        C.threshold_for(np.array([]))
    with pytest.raises(ValueError, match="flagged"):
        C.threshold_for(np.array([0.5]), 1.0)


def test_an_entry_is_used_only_for_the_file_it_was_measured_on(tmp_path):
    entry = C.Calibration("m.safetensors", "abc", 0.5, 0.05, 100, "test split (100 images)", "python …")
    C.save_calibration(tmp_path / C.FILE_NAME, entry)
    C.save_calibration(tmp_path / C.FILE_NAME, C.Calibration("n.safetensors", "def", 0.3, 0.04, 50, "x", "y"))
    assert C.calibration_for(tmp_path / "m.safetensors", "abc") == entry
    assert C.calibration_for(tmp_path / "m.safetensors", "retrained") is None
    assert C.calibration_for(tmp_path / "other.safetensors", "abc") is None
    assert set(C.load_calibrations(tmp_path / C.FILE_NAME)) == {"m.safetensors", "n.safetensors"}
    assert entry.unsure(0.49) and not entry.unsure(0.5)


def test_every_shipped_checkpoint_has_a_threshold_for_its_own_file():
    from pathlib import Path

    import resattn

    folder = Path(__file__).resolve().parents[1] / "checkpoints"
    for path in sorted(folder.glob("*.safetensors")):
        found = C.calibration_for(path, resattn.file_hash(path))
        assert found is not None, f"{path.name}: run scripts/calibrate_confidence.py"
        assert 0 < found.threshold < 1 and found.flagged <= C.FLAGGED and found.images > 1000


def test_per_image_results_survive_the_file_and_a_bad_record_is_none(tmp_path):
    correct = np.random.default_rng(1).random(3925) < 0.88
    labels = np.arange(3925) % 10
    entry = C.Calibration("m.safetensors", "abc", 0.5, 0.05, 3925, "val split", "python …", C.labels_digest(labels),
                          C.pack_correct(correct))
    C.save_calibration(tmp_path / C.FILE_NAME, entry)
    found = C.calibration_for(tmp_path / "m.safetensors", "abc")
    assert np.array_equal(found.correct_images(), correct)
    outcomes = found.outcomes()
    assert outcomes.images == C.labels_digest(labels) and np.array_equal(outcomes.correct, correct)
    assert found.labels_sha256 == C.labels_digest(list(labels)) != C.labels_digest(labels[::-1])  # order counts
    old = C.Calibration("m.safetensors", "abc", 0.5, 0.05, 3925, "val split", "python …")  # before per-image records
    assert old.correct_images() is None
    short = C.Calibration("m.safetensors", "abc", 0.5, 0.05, 4000, "x", "y", entry.labels_sha256, entry.correct)
    garbage = C.Calibration("m.safetensors", "abc", 0.5, 0.05, 3925, "x", "y", entry.labels_sha256, "not base64!")
    assert short.correct_images() is None and garbage.correct_images() is None
    assert old.outcomes() is None and short.outcomes() is None and garbage.outcomes() is None


def test_shipped_per_image_results_match_the_recorded_accuracy():
    """The per-image record of each shipped file scores within half a point of the final-epoch top-1 its
    metadata records (the file stores float16 weights; training evaluated the float32 ones), and checkpoints of
    one dataset were measured on the same images in the same order."""
    from pathlib import Path

    import resattn

    folder = Path(__file__).resolve().parents[1] / "checkpoints"
    digests: dict[str, set[str]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        found = C.calibration_for(path, resattn.file_hash(path))
        correct = found.correct_images()
        assert correct is not None, f"{path.name}: run scripts/calibrate_confidence.py"
        recorded = resattn.read_meta(path)["metrics"]["test_top1"]
        assert abs(correct.mean() - recorded) < 0.005, path.name
        digests.setdefault(resattn.read_meta(path)["dataset"], set()).add(found.labels_sha256)
    assert all(len(found) == 1 for found in digests.values()) and len(digests) >= 2
