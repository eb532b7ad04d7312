"""Writes ``tests/data/resume_fixture/``: a tiny run stopped mid-epoch by the code of its time, and the digest of the
weights the same run ends with uninterrupted. ``tests/test_train.py`` resumes it with today's code and requires the
same final weights, so a change to the training package that breaks resume state made before it fails a test.

Run from the repository root (once, with the code whose state format is to be kept): ``python tests/data/make_resume_fixture.py``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.test_data import make_tree, zip_tree  # noqa: E402

from resattn.train import TrainConfig, train  # noqa: E402

HERE = Path(__file__).resolve().parent / "resume_fixture"
#: The run: 48 training images, batch 8, 2 epochs = 12 iterations; stopped after 5 (mid-epoch 1).
RUN = dict(model="attention56_cifar", width_mult=0.125, batch_size=8, eval_batch_size=16, threads=1, progress="none",
           epochs=2, label_noise=0.2, seed=0)
STOP_AFTER = 5
#: What stands for the generating machine's temporary folder in the stored config (resume reads none of its paths).
PLACEHOLDER = "<tmp>"


def scrub(path: Path, tmp: str) -> None:
    """Replace the temporary folder's path in a text file: the fixture names no machine's paths."""
    path.write_text(path.read_text().replace(tmp, PLACEHOLDER))


def dataset(root: Path) -> Path:
    """The run's data, generated deterministically (the fixture stores no images)."""
    return zip_tree(make_tree(root / "tree", per_class=(16, 4)), root / "tiny.zip")


def digest(weights: dict) -> dict[str, str]:
    """sha256 of every tensor's bytes: equal digests mean bit-for-bit equal weights."""
    return {k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest() for k, v in sorted(weights.items())}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = str(dataset(tmp))
        train(TrainConfig(**RUN, data=data, out=str(tmp / "full"), state_dir=str(tmp / "sfull")))
        final = digest(load_file(str(tmp / "full" / "model.safetensors")))
        stopped = train(TrainConfig(**RUN, data=data, out=str(tmp / "run"), state_dir=str(tmp / "state"),
                                    stop_after=STOP_AFTER))
        assert stopped == {"stopped_at": STOP_AFTER}, stopped
        shutil.rmtree(HERE, ignore_errors=True)
        shutil.copytree(tmp / "run", HERE / "out")
        scrub(HERE / "out" / "config.json", str(tmp))
        (HERE / "state").mkdir()
        with safe_open(str(tmp / "state" / "state.safetensors"), "pt") as fh:  # the tensors as written, paths scrubbed
            info = fh.metadata()["info"].replace(str(tmp), PLACEHOLDER)
        save_file(load_file(str(tmp / "state" / "state.safetensors")), str(HERE / "state" / "state.safetensors"),
                  metadata={"info": info})
        (HERE / "final_digest.json").write_text(json.dumps({"run": RUN, "stop_after": STOP_AFTER, "weights": final},
                                                           indent=1) + "\n")


if __name__ == "__main__":
    main()
