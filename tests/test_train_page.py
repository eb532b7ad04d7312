"""The Train page driven headlessly (AppTest): start a tiny fine-tuning job from the form, watch it finish over
re-runs, find its checkpoint in the model picker and explore it; a bad upload is refused on the page."""

from __future__ import annotations

import io
import sys
import time
import zipfile
from pathlib import Path

import pytest
import resattn
from streamlit.testing.v1 import AppTest

from .test_data import make_tree, zip_tree
from .test_jobs import stop_all

APP = Path(__file__).resolve().parents[1] / "app"
sys.path.insert(0, str(APP))
CLASSES = ["cat", "dog", "frog"]


def tiny_checkpoint(folder: Path) -> Path:
    """An eighth-width Attention-56 with the tiny dataset's classes, at its 16-pixel input size."""
    folder.mkdir(parents=True, exist_ok=True)
    model = resattn.create_model("attention56_cifar", width_mult=0.125, num_classes=3)
    path = folder / "tiny_base.safetensors"
    resattn.save_checkpoint(path, model, {"classes": CLASSES, "input_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3,
                                          "dataset": "tiny", "metrics": {"test_top1": 0.4}})
    return path


@pytest.fixture
def train_env(tmp_path, monkeypatch):
    data = zip_tree(make_tree(tmp_path / "tree", per_class=(16, 4)), tmp_path / "tiny.zip")
    tiny_checkpoint(tmp_path / "checkpoints")
    jobs_dir = tmp_path / "jobs"
    monkeypatch.setenv("RESATTN_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("RESATTN_JOBS_DIR", str(jobs_dir))
    monkeypatch.setenv("RESATTN_DATASETS", f"tiny={data}")
    monkeypatch.setenv("RESATTN_DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RESATTN_APP_MODELS", "none")
    for key in ("RESATTN_JOBS_PASSPHRASE", "RESATTN_GALLERY_DATA", "RESATTN_JOBS_MAX_RUNNING"):
        monkeypatch.delenv(key, raising=False)
    yield jobs_dir
    stop_all(jobs_dir)


def train_page() -> AppTest:
    at = AppTest.from_file(str(APP / "main.py"), default_timeout=300)
    at.run()
    at.switch_page("views/train.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_start_a_job_watch_it_finish_and_pick_its_model(train_env):
    at = train_page()
    assert at.title[0].value == "Train" and any("No jobs yet" in i.value for i in at.info)
    assert at.selectbox(key="train_data").value == "tiny"
    at.radio(key="train_preset").set_value("stage3")
    at.multiselect(key="train_classes").set_value(["cat", "dog"])
    at.number_input(key="train_epochs").set_value(2.0)
    at.number_input(key="train_batch").set_value(8)
    at.number_input(key="train_probe").set_value(2)
    at.slider(key="train_noise").set_value(0.2)
    at.button(key="train_start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Queued job 1" in s.value for s in at.success)

    deadline, states = time.monotonic() + 120, []
    while time.monotonic() < deadline:
        table = at.dataframe[0].value
        states.append(table["state"].iloc[0])
        if states[-1] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(1.0)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
    log = "\n".join(c.value for c in at.code)
    assert states[-1] == "succeeded", f"{states}\n{log}"
    assert "running" in states or "queued" in states  # it was watched while it ran
    assert table["progress"].iloc[0] == 1.0 and table["device"].iloc[0].startswith("cpu")
    assert "last stage" in table["what"].iloc[0] and "2 classes" in table["what"].iloc[0]
    assert any("pick **job 1**" in s.value for s in at.success)
    assert "final-epoch test accuracy" in log
    # the curves and the masks at epoch 1..2 beside epoch 0, with the colour range stated
    assert len(at.get("plotly_chart")) == 3
    assert at.slider(key="train_epoch_1").value == 2
    assert any("Colour range [" in c.value and "Epoch 0 is the base checkpoint" in c.value for c in at.caption)

    # the model picker of every page now offers the job's checkpoint
    picker = at.selectbox(key="model")
    job_key = next(k for k in picker.options if "job-1" in str(k))
    at.selectbox(key="model").set_value(job_key).run()
    at.switch_page("views/explore.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("job 1 —" in c.value for c in at.sidebar.caption)


def test_a_bad_upload_is_refused_on_the_page(train_env):
    at = train_page()
    at.selectbox(key="train_data").set_value("Upload a zip of images…").run()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("cat/../../../escape.png", b"x")
        zf.writestr("dog/1.png", b"y")
    at.file_uploader(key="train_zip").set_value([("bad.zip", buffer.getvalue(), "application/zip")])
    at.run()
    at.button(key="train_start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Not started" in e.value and "escapes the target folder" in e.value for e in at.error)
    assert any("No jobs yet" in i.value for i in at.info)


def unlock_button(at: AppTest):
    """The passphrase form's button (a form's submit button takes no key in the oldest Streamlit supported)."""
    return next(b for b in at.button if b.label == "Unlock")


def test_passphrase_gates_starting_jobs(train_env, monkeypatch):
    monkeypatch.setenv("RESATTN_JOBS_PASSPHRASE", "open sesame")
    monkeypatch.setenv("RESATTN_JOBS_GUESS_DELAY", "0")
    at = train_page()
    assert at.button(key="train_start").disabled
    at.text_input(key="jobs_passphrase_input").input("wrong")  # typed into the form, sent with its button
    unlock_button(at).click().run()
    assert any("not the passphrase" in e.value for e in at.error) and at.button(key="train_start").disabled
    at.text_input(key="jobs_passphrase_input").input("open sesame")
    unlock_button(at).click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.button(key="train_start").disabled and at.session_state["jobs_unlocked"]


def test_a_session_cancels_only_its_own_jobs(train_env, monkeypatch):
    from resattn import jobs

    monkeypatch.setenv("RESATTN_JOBS_MAX_RUNNING", "0")  # jobs stay queued: no process is started
    other = jobs.JobManager(train_env).submit(["--data", "tiny", "--epochs", "1"], owner="another-browser")
    at = train_page()
    assert at.dataframe[0].value["by"].tolist() == ["another browser"]
    assert at.button(key=f"train_cancel_{other.id}").disabled
    assert any("started by another browser" in c.value for c in at.caption)
    at.button(key="train_start").click().run()
    assert any("Queued job 2" in s.value for s in at.success)
    assert at.selectbox(key="train_job").value == 2 and not at.button(key="train_cancel_2").disabled
    at.button(key="train_cancel_2").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert jobs.JobManager(train_env, max_running=0).get(2).state == "cancelled"
    assert jobs.JobManager(train_env, max_running=0).get(other.id).state == "queued"


def shown_job(at: AppTest, before: str | None = None) -> str:
    """The Job dropdown's label as a browser shows it: the value the server last sent (``set_value``), else the
    label the browser already held (``before``), else the default option the widget was created with."""
    box = at.selectbox(key="train_job")
    if box.proto.set_value:
        return box.proto.raw_value
    return before if before is not None else box.options[box.proto.default]


def test_the_job_dropdown_follows_the_jobs_state(train_env, monkeypatch):
    from resattn import jobs

    monkeypatch.setenv("RESATTN_JOBS_MAX_RUNNING", "0")  # jobs stay queued until the test changes them
    manager = jobs.JobManager(train_env)
    first = manager.submit(["--data", "tiny", "--epochs", "1"], owner="cli")
    manager.submit(["--data", "tiny", "--epochs", "1"], owner="cli")  # a newer job: the default choice
    at = train_page()
    at.selectbox(key="train_job").set_value(first.id).run()
    box = at.selectbox(key="train_job")
    label = box.options[box.index]  # what the user clicked
    assert label == f"job {first.id} · queued"
    with manager.store.transaction() as conn:
        manager.store.update(conn, first.id, state="succeeded", ended=time.time())
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert f"Job {first.id}: **succeeded**" in at.get("progress")[0].proto.text  # the bar under the dropdown
    assert at.selectbox(key="train_job").value == first.id  # still the job the user chose
    label = shown_job(at, label)
    assert label == f"job {first.id} · succeeded"
    at.run()  # nothing changed: the server does not send the value again, the browser keeps the new label
    assert not at.selectbox(key="train_job").proto.set_value and shown_job(at, label) == label
