"""Train: fine-tune a checkpoint in the background and watch its soft masks change, epoch by epoch.

Jobs run in their own processes (``resattn.jobs``): they outlive a reload of this page and a restart of the
server, and a job queued here starts when the one before it ends, with or without a browser open. This page only
submits, lists, watches and cancels them; the job list refreshes itself (a fragment with ``run_every``) while a
job is queued or running, without rerunning the rest of the page.
"""

import html
import os
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

import resattn
from resattn import jobs
from resattn.archive import ArchiveError
from resattn.data import DataError, class_names, open_split

from ui import dataset_tools, job_access, state
from ui.job_access import plain

REFRESH_S = 2.0
PRESETS = {"stage3": "Last stage only (stage 3 + classifier)", "all": "Whole network", "head": "Classifier only"}
UPLOAD = "Upload a zip of images…"


# ---------------------------------------------------------------------------------------------- helpers


@st.cache_resource(show_spinner=False)
def manager(root: str) -> jobs.JobManager:
    """One job manager per jobs folder and server process (it reconciles the records when created)."""
    return jobs.JobManager(root)


def passphrase() -> str | None:
    """The server's passphrase: ``RESATTN_JOBS_PASSPHRASE``, else the Streamlit secret ``jobs_passphrase``."""
    if os.environ.get(jobs.ENV_PASSPHRASE):
        return os.environ[jobs.ENV_PASSPHRASE]
    try:
        return st.secrets.get("jobs_passphrase") or None
    except Exception:  # no secrets.toml at all: reading st.secrets raises
        return None


def owner() -> str:
    """This browser's owner id, kept across reloads by a cookie (:func:`ui.job_access.browser_owner`)."""
    return job_access.browser_owner()


@st.cache_data(show_spinner=False, max_entries=16)
def listed_classes(path: str, mtime: float) -> list[str]:
    """Display names of a folder's or zip's training classes, cached until the file changes (``mtime``)."""
    return class_names(open_split(path, "train").classes)


def dataset_classes(path: str) -> list[str]:
    """Display names of a dataset's training classes (read from its listing, no image decoded; CIFAR-10's from
    torchvision are known before it is downloaded); raises ``OSError`` or ``DataError``."""
    if dataset_tools.is_torchvision(path):
        return list(dataset_tools.CIFAR10_CLASSES)
    return listed_classes(path, os.path.getmtime(path))


@st.cache_data(show_spinner=False, max_entries=256)
def load_snapshot(path: str, mtime: float) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def colorscale(name: str) -> list[list]:
    """A matplotlib colormap (the one the sidebar chose for masks) as a plotly colorscale."""
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        cmap = matplotlib.colormaps["viridis"]
    return [[i / 10, "rgb({:.0f},{:.0f},{:.0f})".format(*(255 * np.array(cmap(i / 10)[:3])))] for i in range(11)]


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours = f"{seconds // 3600}:" if seconds >= 3600 else ""
    return f"{hours}{seconds // 60 % 60:02d}:{seconds % 60:02d}" if hours else f"{seconds // 60}:{seconds % 60:02d}"


def job_classes(job: jobs.Job) -> list[str]:
    """Class names of a job's outputs: its ``--classes`` subset, else its dataset's classes ([] if unknown)."""
    chosen = jobs._option(job.options, "--classes")
    if chosen:
        return [c.strip() for c in chosen.split(",") if c.strip()]
    data = jobs._option(job.options, "--data")
    try:
        return dataset_classes(data) if data else []
    except (OSError, DataError):
        return []


def who(job: jobs.Job) -> str:
    return "you" if job.owner == owner() else "a terminal" if job.owner == "cli" else "another browser"


# ---------------------------------------------------------------------------------------------- the page

st.title("Train")
st.markdown("Fine-tune a checkpoint on a few classes, on noisy labels (the paper's Table 5), or ARL against NAL, "
            "and watch the soft masks of fixed probe images change epoch by epoch. Jobs run in the background "
            "on this server — on its GPU when it has one — one at a time; a finished job's model joins the model "
            "picker as **job N**.")

root = str(jobs.jobs_dir())
try:
    m = manager(root)
except OSError as exc:
    st.error(f"The jobs folder {root} cannot be used ({exc}); set {jobs.ENV_DIR} to a writable folder.")
    st.stop()
except sqlite3.Error as exc:  # locked past the busy timeout, or not a database
    st.error(plain(jobs.database_problem(Path(root), exc)))
    st.stop()
owner()  # on a first visit, this sets the browser's cookie: a reload then keeps its jobs
required = passphrase()
limits = jobs.JobLimits.from_env()
unlocked = not required or st.session_state.get("jobs_unlocked", False)

if required and not unlocked:
    gate = st.empty()
    with gate.form("unlock", border=True):
        st.markdown("**This server asks for a passphrase before a job is started or cancelled.** Anyone can watch.")
        given = st.text_input("Passphrase", type="password", key="jobs_passphrase_input")
        if st.form_submit_button("Unlock"):
            verdict, wait = job_access.throttle(job_access.guess_delay()).check(given, required)
            if verdict == "right":
                st.session_state["jobs_unlocked"] = unlocked = True
            elif verdict == "wrong":
                st.error("That is not the passphrase." + (f" The next guess is checked in {wait:.0f} s." if wait
                                                          else ""))
            else:
                st.error(f"Too soon: after a wrong guess this server checks no passphrase for "
                         f"{job_access.guess_delay():g} s. Try again in {max(wait, 1):.0f} s.")
    if unlocked:
        gate.empty()

st.header("Start a fine-tuning job")
bases = [e for e in state.catalogue(include_random=False) if e.path is not None and e.error is None]
datasets = jobs.configured_datasets()
if not bases:
    st.info("There is no checkpoint to fine-tune: add one to `checkpoints/` (or `RESATTN_CHECKPOINT_DIR`).")
else:
    left, right = st.columns(2)
    base_label = left.selectbox("Base checkpoint", [e.label for e in bases], key="train_base")
    base = next(e for e in bases if e.label == base_label)
    preset = left.radio("What to train", list(PRESETS), format_func=PRESETS.get, key="train_preset",
                        help="Frozen parts keep their weights and batch-norm statistics.")
    source = right.selectbox("Data", list(datasets) + [UPLOAD], key="train_data",
                             help=f"Datasets named in {jobs.ENV_DATASETS} (name=path,...; cifar10, the default "
                                  "when it is unset, is torchvision's CIFAR-10), or a zip you upload.")
    upload, classes = None, []
    if source == UPLOAD:
        upload = right.file_uploader(
            "Zip: train/ and test/ (or val/) class folders, or only class folders (every fifth image of each "
            "class is then held out for testing)", type=["zip"], key="train_zip")
    else:
        try:
            options = dataset_classes(datasets[source])
        except (OSError, DataError) as exc:
            right.error(f"Dataset {source} cannot be read: {exc}")
            options = []
        classes = right.multiselect("Classes (none chosen: all)", options, key="train_classes")
        if dataset_tools.is_torchvision(datasets[source]):  # a job would download it: say so before it fails
            try:
                dataset_tools.torchvision_split(datasets[source], "test")
            except DataError:
                dataset_tools.offer_download(datasets[source], key="train_download", container=right)
            dataset_tools.downloaded_note(right)
    c1, c2, c3 = st.columns(3)
    epochs = c1.number_input("Epochs", 0.1, float(limits.max_epochs), 1.0, 0.5, key="train_epochs",
                             help=f"At most {limits.max_epochs:g} on this server ({jobs.ENV_MAX_EPOCHS}).")
    lr = c2.number_input("Peak learning rate", 0.0001, 1.0, 0.05, 0.01, format="%.4f", key="train_lr",
                         help="The fast recipe's one-cycle schedule: warm-up to this rate, then cosine to zero.")
    noise = c3.slider("Label noise", 0.0, 0.9, 0.0, 0.1, key="train_noise",
                      help="Fraction of training labels replaced by another class (the paper's Table 5 protocol); "
                           "test labels stay clean.")
    with st.expander("Budget"):
        b1, b2, b3, b4 = st.columns(4)
        batch = b1.number_input("Batch size", 2, 1024, 128, key="train_batch")
        most = limits.max_images
        train_limit = b2.number_input(f"Training images (0: all, up to {most:,})", 0, most, min(5000, most), 500,
                                      key="train_limit")
        test_limit = b3.number_input(f"Test images (0: all, up to {most:,})", 0, most, min(1000, most), 500,
                                     key="train_test_limit", help="Evaluated after every epoch.")
        probe = b4.number_input("Probe images", 1, 16, 4, key="train_probe",
                                help="Fixed test images whose masks are saved after every epoch.")
    try:
        partner = jobs.counterpart(base.path, [e.path for e in bases])
    except resattn.CheckpointError:
        partner = None
    pair = st.checkbox("ARL vs NAL pair", key="train_pair", disabled=partner is None,
                       help="Two jobs on the same data, seed and budget: this checkpoint and its counterpart with "
                            "the other attention learning (same model, dataset and attention).")
    st.caption(f"Pair: **{Path(base.path).stem}** and **{Path(partner).stem}**." if partner else
               "ARL vs NAL pair: no checkpoint matches this one with the other attention learning.")
    if st.button("Start job" + ("s" if pair else ""), type="primary", key="train_start", disabled=not unlocked):
        refusal = jobs.submit_refusal(m, owner(), passphrase_set=bool(required), unlocked=bool(unlocked),
                                      limits=limits, count=2 if pair else 1)
        if source == UPLOAD and upload is None:
            refusal = refusal or "Choose a zip to upload first."
        if refusal:
            st.error(refusal)
        else:
            options = jobs.fine_tune_options(
                base.path, None if source == UPLOAD else datasets[source], train_only=preset, epochs=float(epochs),
                lr=float(lr), classes=classes, label_noise=float(noise), batch_size=int(batch),
                train_limit=int(train_limit) or None, test_limit=int(test_limit) or None, probe=int(probe))
            try:
                with tempfile.TemporaryDirectory() as folder:
                    zip_path = None
                    if upload is not None:
                        zip_path = Path(folder) / jobs.safe_file_name(upload.name, "upload.zip")
                        zip_path.write_bytes(upload.getvalue())
                    with st.spinner("Checking the zip…" if zip_path else "Queueing…"):
                        if pair:
                            created = m.submit_pair(options, candidates=[e.path for e in bases], owner=owner(),
                                                    upload=zip_path)
                        else:
                            created = [m.submit(options, owner=owner(), upload=zip_path)]
            except (jobs.JobError, ArchiveError, resattn.CheckpointError, DataError) as exc:
                st.error(f"Not started: {plain(str(exc))}")
            except sqlite3.Error as exc:
                st.error(plain(jobs.database_problem(m.root, exc)))
            else:
                st.session_state["train_job"] = created[0].id
                st.success("Queued " + " and ".join(f"job {j.id}" for j in created) + ".")
if required and not unlocked:
    st.caption("Unlock with the passphrase above to start or cancel jobs.")


def curves(rows: list[dict]) -> None:
    """Loss and accuracy per epoch, train and test."""
    if not rows:
        st.caption("Loss and accuracy curves appear after the first epoch.")
        return
    x = [r["epoch"] for r in rows]
    figures = []
    for title, key, axis in (("Loss", "loss", {}), ("Top-1 accuracy", "top1", {"tickformat": ".0%", "range": [0, 1]})):
        fig = go.Figure([go.Scatter(x=x, y=[r[f"{split}_{key}"] for r in rows], name=split, mode="lines+markers")
                         for split in ("train", "test")])
        fig.update_layout(title=title, height=280, margin=dict(l=10, r=10, t=40, b=10), xaxis_title="epoch",
                          font=dict(size=14),
                          xaxis=dict(dtick=1), yaxis=axis, legend=dict(orientation="h", y=-0.3))
        figures.append(fig)
    for column, fig, key in zip(st.columns(2), figures, ("loss", "accuracy")):
        column.plotly_chart(fig, key=f"train_curve_{key}")
    st.caption("Training figures are on the training labels (noisy ones when label noise is set, smoothed loss); "
               "test figures are on clean labels.")


def masks(job: jobs.Job, files: list[Path]) -> None:
    """The probe images' masks at a chosen epoch, beside epoch 0 (the base checkpoint's)."""
    if not files:
        st.caption("Mask snapshots appear once the job has loaded its data and model.")
        return
    snaps = {int(p.stem.split("_")[1]): load_snapshot(str(p), p.stat().st_mtime) for p in files}
    first = snaps[min(snaps)]
    modules = sorted((k for k in first if k.startswith("stage")),
                     key=lambda k: tuple(int(v) for v in k.removeprefix("stage").split("_module")))
    names = job_classes(job)
    name = lambda i: names[i] if 0 <= i < len(names) else f"class {i}"  # noqa: E731
    shown = lambda i: html.escape(name(i))  # noqa: E731 - plotly titles read a little HTML: class names are text
    c1, c2, c3 = st.columns(3)
    image = c1.selectbox("Probe image", range(len(first["labels"])), key=f"train_probe_image_{job.id}",
                         format_func=lambda i: f"image {i + 1} ({name(int(first['labels'][i]))})")
    module = c2.selectbox("Attention module", modules, index=len(modules) - 1, key=f"train_module_{job.id}",
                          format_func=lambda k: k.replace("stage", "stage ").replace("_module", ", module "))
    later = sorted(e for e in snaps if e > 0)
    if len(later) > 1:
        epoch = c3.slider("Epoch", later[0], later[-1], later[-1], key=f"train_epoch_{job.id}")
    else:
        epoch = later[0] if later else 0
        c3.caption(f"Epoch {epoch}: the only one saved so far." if later else "No epoch finished yet.")
    maps = [snaps[e][module][image] for e in sorted(snaps)]
    low, high = float(min(a.min() for a in maps)), float(max(a.max() for a in maps))
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    titles = [f"probe: {shown(int(first['labels'][image]))}"]
    for e in (0, epoch):
        s = snaps[e]
        titles.append(f"epoch {e}{' (base)' if e == 0 else ''}: says {shown(int(s['predictions'][image]))} "
                      f"({float(s['probabilities'][image]):.0%})")
    fig = make_subplots(rows=1, cols=3, subplot_titles=titles, horizontal_spacing=0.04)
    fig.add_trace(go.Image(z=snaps[epoch]["images"][image]), row=1, col=1)
    for col, e in ((2, 0), (3, epoch)):
        fig.add_trace(go.Heatmap(z=snaps[e][module][image], coloraxis="coloraxis",
                                 hovertemplate="x %{x}, y %{y}: M %{z:.4f}<extra></extra>"), row=1, col=col)
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{col}", row=1, col=col)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    cmap = st.session_state.get("cmap_mask", "viridis")
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=50, b=10), font=dict(size=14),
                      coloraxis=dict(colorscale=colorscale(cmap), cmin=low, cmax=high,
                                     colorbar=dict(title="M", thickness=14)))
    st.plotly_chart(fig, key=f"train_masks_{job.id}")
    st.caption(f"Channel-mean soft mask M of {module.replace('stage', 'stage ').replace('_module', ', module ')}. "
               f"Colour range [{low:.4f}, {high:.4f}]: the lowest and highest value of this module's mask for this "
               "image over every saved epoch, so colours compare across the slider (the activation's own range "
               "is 0–1 for sigmoid masks, −1–1 for channel attention). Epoch 0 is the base checkpoint before "
               "fine-tuning.")


def job_details(job: jobs.Job) -> None:
    """Progress with ETA, the cancel button, curves, masks and the log of one job."""
    p = m.progress(job)
    text = f"Job {job.id}: **{job.state}** · {p.fraction:.0%}"
    if p.iterations:
        text += f" · iteration {p.iteration}/{p.iterations} · epoch {p.epoch}/{p.epochs}"
    if job.state == "running" and p.eta_s is not None:
        text += f" · about {duration(p.eta_s)} left"
    elif job.ended and job.started:
        text += f" · took {duration(job.ended - job.started)}"
    st.progress(p.fraction, text=text)
    st.caption(f"{plain(job.label)} · device **{job.device_label}** · started by {who(job)}")
    if job.state == "failed":
        reason = plain(job.error.splitlines()[0]) if job.error else "no reason recorded"
        st.error(f"Job {job.id} failed: {reason}. The log's tail is below.")
    elif job.state == "succeeded" and job.checkpoint:
        st.success(f"Checkpoint `{job.checkpoint}`: pick **job {job.id}** in the model picker to explore it.")
    if job.active:
        refusal = jobs.cancel_refusal(job, owner(), passphrase_set=bool(required), unlocked=bool(unlocked))
        if st.button("Cancel job", key=f"train_cancel_{job.id}", disabled=refusal is not None, help=refusal):
            # checked again on the action itself, on the record as it is now: a disabled button is no permission
            refusal = jobs.cancel_refusal(m.get(job.id), owner(), passphrase_set=bool(required),
                                          unlocked=bool(unlocked))
            if refusal is None:
                m.cancel(job.id)
                st.toast(f"Job {job.id}: cancelling (the trainer stops after its current step).")
        if refusal:
            st.caption(refusal)
    curves(m.metrics(job))
    masks(job, m.snapshots(job))
    with st.expander("Log (last 40 lines)", expanded=job.state == "failed"):
        st.code(m.log_tail(job, 40) or "(nothing logged yet)", language=None)


def jobs_panel() -> None:
    """The job list and the selected job; reruns on its own every REFRESH_S seconds while a job is active."""
    try:
        listed = m.list()
    except sqlite3.Error as exc:
        st.error(plain(jobs.database_problem(m.root, exc)))
        return
    finished = {j.id for j in listed if not j.active}
    seen = st.session_state.get("_train_finished")
    st.session_state["_train_finished"] = finished
    if seen is not None and finished - seen:  # a job ended: a full rerun adds its model to the picker
        st.rerun()
    if not listed:
        st.info("No jobs yet.")
        return
    rows = [{"job": j.id, "state": j.state, "progress": m.progress(j).fraction, "device": j.device_label,
             "what": j.label, "by": who(j)} for j in listed]
    st.dataframe(rows, hide_index=True, column_config={
        "progress": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0, format="percent"),
        "what": st.column_config.TextColumn(width="large")})
    labels = {j.id: f"job {j.id} · {j.state}" for j in listed}
    current = st.session_state.get("train_job")
    if current not in labels:
        st.session_state["train_job"] = next(iter(labels))
    elif st.session_state.get("_train_job_labels", {}).get(current, labels[current]) != labels[current]:
        # The browser keeps the label it was last sent ("job 3 · running") until the server sends the value
        # again; setting it anew sends the label of the job's state now.
        st.session_state["train_job"] = current
    st.session_state["_train_job_labels"] = labels
    chosen = st.selectbox("Job", list(labels), key="train_job", format_func=labels.__getitem__)
    job_details(next(j for j in listed if j.id == chosen))
    refreshing = f"; refreshing every {REFRESH_S:g} s while a job is queued or running."
    st.caption(f"Updated {time.strftime('%H:%M:%S')}" + (refreshing if any(j.active for j in listed) else "."))


st.header("Jobs")
try:
    active = any(j.active for j in m.list())
except sqlite3.Error as exc:  # locked past the busy timeout, or broken: say so, the rest of the page works
    st.error(plain(jobs.database_problem(m.root, exc)))
    st.stop()
st.fragment(jobs_panel, run_every=REFRESH_S if active else None)()
