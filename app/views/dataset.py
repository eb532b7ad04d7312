"""Dataset: the sidebar's model over many images of a dataset: each image with its stage-k soft mask, sorted and
filtered by correct / wrong, confidence and a mask statistic; per-class mean masks; a click opens an image in
Explore. Thin over :func:`resattn.masks.collect_masks` (see ``dataset_tools``)."""

import time
from dataclasses import replace

import numpy as np
import streamlit as st
from PIL import Image

import resattn
from resattn import maps, masks
from resattn.archive import ArchiveError
from resattn.data import DataError

from ui import components
from ui import dataset_tools as tools

UPLOAD = "Upload a zip of class folders…"
THUMB = 112  # grid thumbnails are drawn at this side
COLUMNS = 6
PER_PAGE = 36
STAT_NAMES = {"mean": "mean of the mask", "fraction_above_half": "fraction of positions > 0.5",
              "top20_share": "share of mass in the top 20 % of positions",
              "centre_minus_border": "centre (middle half of each side) minus border"}
STAT_SHORT = {"mean": "mean", "fraction_above_half": "frac>0.5", "top20_share": "top-20%",
              "centre_minus_border": "centre−border"}
SORTS = {"position": "position in the split", "confidence": "confidence", **STAT_NAMES}
FILTERS = {"all": "all", "correct": "correct only", "wrong": "wrong only"}
CONTRASTS = {"fixed": "fixed natural scale", "stretch": "stretched (1st–99th pct. of all masks shown)"}


def thumbnail(picture: np.ndarray) -> np.ndarray:
    """A grid picture at THUMB×THUMB: nearest neighbour for small inputs (each input pixel a square)."""
    resample = Image.Resampling.NEAREST if picture.shape[0] <= 64 else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(picture).resize((THUMB, THUMB), resample))


def shared_scale(values: np.ndarray, quantity: str, contrast: str, what: str) -> maps.Scale:
    """One colour scale for a set of maps (``what``: the grid's masks, or the class means): ``maps.scale_for`` on
    all their values, described as shared when stretched."""
    scale = maps.scale_for(values[np.isfinite(values)], quantity, contrast)
    if not scale.stretched:
        return scale
    span = f"±{scale.high:.3g}" if scale.diverging else f"{scale.low:.3g}–{scale.high:.3g}"
    return replace(scale, description=f"stretched to the 1st–99th percentile of {what}: {span}")


st.title("Dataset: soft masks over many images")
start = time.perf_counter()
try:
    choice = tools.current_model()
except (resattn.CheckpointError, LookupError) as exc:
    st.error(f"No model to run: {exc}")
    st.stop()
entry, model, meta = choice.entry, choice.model, choice.meta
quantity = "channel_mask" if meta.get("overrides", {}).get("attention") == "channel" else "mask"
text = components.banner_text(entry)
if entry.random:
    st.warning(text + " — **RANDOM** initialisation, untrained.")
else:
    st.markdown(text + f" · checkpoint `{entry.short_hash}`")

# ------------------------------------------------------------------------------------------- data source
datasets = tools.configured_datasets()
c1, c2, c3 = st.columns([3, 1, 1])
chosen = st.session_state.get("dataset_source")
model_changed = st.session_state.get("_dataset_model", entry.key) != entry.key
st.session_state["_dataset_model"] = entry.key
if chosen not in [*datasets, UPLOAD] or (model_changed and chosen in datasets  # first run, gone, or another model
                                         and not tools.fits(chosen, datasets[chosen], meta)):
    st.session_state.pop("dataset_source", None)
    if (default := tools.default_dataset(datasets, meta)) is not None:  # one whose classes this model knows
        st.session_state["dataset_source"] = default
source = c1.selectbox("Dataset", list(datasets) + [UPLOAD], key="dataset_source",
                      help="Datasets named in RESATTN_DATASETS (name=path,…: folders or zips with train/ and "
                           "test/ or val/ class folders; cifar10, the default when it is unset, is torchvision's "
                           "CIFAR-10), or a zip you upload.")
split = c2.radio("Split", ["test", "train"], key="dataset_split", horizontal=True,
                 help="test falls back to val/ (Imagenette's name for it)")
st.session_state.setdefault("dataset_limit", tools.DEFAULT_LIMIT)
limit = int(c3.number_input("Images", 1, tools.MAX_LIMIT, step=50, key="dataset_limit",
                            help="At most this many, evenly spaced through the split (so spread over its classes)."))

if source == UPLOAD:
    upload = st.file_uploader("A zip of class folders (train/ and test/ or val/, or just <class>/ folders)",
                              type=["zip"], key="dataset_upload")
    if upload is None:
        st.info(("" if datasets else "No dataset is configured (set RESATTN_DATASETS=name=path,… on the server). ")
                + "Upload a zip to see its images. It is checked before use (paths that escape, links, file count "
                "and size limits, files that are not images) and extracted into a temporary folder only.")
        st.stop()
    data = upload.getvalue()
    digest = tools.upload_digest(data)
    try:
        with st.spinner("Checking and extracting the zip…"):
            uploaded = tools.extracted_upload(digest, upload.name, data)
    except ArchiveError as exc:
        st.error(f"The zip was refused: {exc}")
        st.stop()
    name, path, dataset_key = upload.name, str(uploaded.root), f"upload:{digest}"
    st.caption(f"{upload.name}: {uploaded.counts.get('train', 0)} training and {uploaded.counts.get('test', 0)} "
               f"test images in {len(uploaded.classes)} classes"
               + (" (class folders only: every fifth image of each class went to test/)"
                  if uploaded.layout == "class folders" else ""))
else:
    name, path = source, datasets[source]
    dataset_key = tools.source_key(name, path)

try:
    listing = tools.listing(dataset_key, path, split)
except DataError as exc:
    if tools.is_torchvision(path):  # not downloaded yet: offer it, and say what to do without internet access
        tools.offer_download(path, key="dataset_download")
    else:
        st.error(f"Cannot read {name}: {exc}")
    st.stop()
tools.downloaded_note()

# ---------------------------------------------------------------------------------------------- collect
bar = st.progress(0.0, text="Collecting soft masks…")


def report(done: int, total: int) -> None:
    bar.progress(min(1.0, done / max(total, 1)),
                 text=f"Collecting soft masks: {done} of {total} images (decode, crop, one batched pass)")


try:
    result = tools.collect(entry.key, dataset_key, split, limit, model, meta, listing, report)
except ValueError as exc:
    bar.empty()
    matches = tools.matching_models(listing.classes)
    st.warning(f"{name} cannot be shown with this model: {exc}. "
             + (f"Models that know these classes: {', '.join(matches)}." if matches else
                "No model in the picker knows all these classes."))
    st.stop()
bar.empty()
ms = result.masks
for problem in result.skipped[:5]:
    st.warning(f"Skipped {problem}")
st.markdown(f"**{len(ms)}** of the {result.total} images of **{name}** / {listing.split}, evenly spaced through "
            f"the split · top-1 on these: **{ms.accuracy:.1%}** · confidence = softmax probability of the "
            "predicted class.")
if not ms.modules:
    st.info("This model has no attention modules (a plain ResNet baseline): there are no masks to show.")
    st.stop()
module = tools.module_name(model, choice.stage, choice.index)
if module not in ms.modules:
    st.error(f"The model has no attention module {choice.index} in stage {choice.stage}.")
    st.stop()
h, w = ms.masks[module].shape[1:]

with st.expander("Mask statistics of every module over these images"):
    st.dataframe([{"module": n, "size": "×".join(map(str, ms.masks[n].shape[1:])),
                   **{STAT_NAMES[s]: ms.module_stats[n][s] for s in masks.STATISTICS}} for n in ms.modules],
                 hide_index=True)
    st.caption("Each statistic is computed per image on the channel-mean mask at the module's own resolution, "
               "then averaged over images. A flat map has a top-20 % share of 0.2.")
    if ms.stage_response.size:
        st.markdown("Mean |output| of each stage over these images, the quantity of the paper's Fig. 4 (where it "
                    "collapses after stage 2 under NAL for Attention-164): "
                    + ", ".join(f"stage {s} **{v:.3f}**" for s, v in enumerate(ms.stage_response.mean(0), start=1))
                    + ".")

# ------------------------------------------------------------------------------------------------ grid
st.subheader(f"Stage {choice.stage}, module {choice.index}: each image with its soft mask")
stats = ms.image_stats[module]
present = [int(c) for c in np.flatnonzero(ms.class_counts)]
f1, f2, f3, f4 = st.columns(4)
keep = f1.radio("Show", list(FILTERS), key="dataset_filter", format_func=FILTERS.get, horizontal=True)
shown_classes = f1.multiselect("True classes", present, key=f"dataset_classes|{dataset_key}",
                               format_func=lambda c: ms.classes[c], placeholder="all classes")
conf_range = f2.slider("Confidence", 0.0, 1.0, step=0.01, key="dataset_confidence")
stat = f2.selectbox("Mask statistic", list(STAT_NAMES), key="dataset_stat", format_func=STAT_NAMES.get)
finite = stats[stat][np.isfinite(stats[stat])]  # NaN: the top-20 % share of an all-zero map
lo = float(np.floor(finite.min() * 1000) / 1000) if finite.size else 0.0
hi = float(np.ceil(finite.max() * 1000) / 1000) if finite.size else 1.0
hi = hi if hi > lo else lo + 0.001
stat_range = f2.slider(f"{STAT_NAMES[stat]} between", lo, hi, (lo, hi), step=0.001, format="%.3f",
                       key=f"dataset_stat_range|{stat}|{module}|{lo}|{hi}")
sort = f3.selectbox("Sort by", list(SORTS), key="dataset_sort", format_func=SORTS.get)
descending = f3.toggle("Largest first", key="dataset_descending", disabled=sort == "position")
contrast = f4.radio("Colour scale", list(CONTRASTS), key="dataset_contrast", format_func=CONTRASTS.get)
overlaid = f4.toggle("Overlay on the image", key="dataset_overlay")
alpha = f4.slider("Overlay opacity", 0.0, 1.0, step=0.05, key="dataset_alpha", disabled=not overlaid)

selected = np.ones(len(ms), bool)
if keep != "all":
    selected &= ms.correct if keep == "correct" else ~ms.correct
if shown_classes:
    selected &= np.isin(ms.labels, shown_classes)
selected &= (ms.confidence >= conf_range[0] - 1e-9) & (ms.confidence <= conf_range[1] + 1e-9)
values = np.nan_to_num(stats[stat], nan=-np.inf)
selected &= (values >= stat_range[0] - 1e-9) & (values <= stat_range[1] + 1e-9)
rows = np.flatnonzero(selected)
key = {"position": ms.index, "confidence": ms.confidence}.get(sort, stats.get(sort))
rows = rows[np.argsort(key[rows], kind="stable")]
if descending and sort != "position":
    rows = rows[::-1]
st.markdown(f"Showing **{len(rows)}** of {len(ms)} images, sorted by {SORTS[sort]}"
            + (" (largest first)" if descending and sort != "position" else "") + ".")

pages = max(1, -(-len(rows) // PER_PAGE))
if pages > 1:
    st.session_state["dataset_page"] = min(max(1, int(st.session_state.get("dataset_page", 1))), pages)
    page = int(st.number_input(f"Page (of {pages})", 1, pages, key="dataset_page"))
else:
    page = 1
chunk = rows[(page - 1) * PER_PAGE : page * PER_PAGE]
scale = shared_scale(ms.masks[module][chunk], quantity, contrast, "the masks on this page") if len(chunk) else \
    maps.scale_for(np.zeros(1), quantity, "fixed")
colours = maps.cmap_for(scale, components.cmap("mask"), quantity)  # type: ignore[arg-type]
for first in range(0, len(chunk), COLUMNS):
    for column, row in zip(st.columns(COLUMNS), chunk[first : first + COLUMNS]):
        with column:
            picture = thumbnail(result.pictures[row])
            heat = maps.colorize(maps.upsample(ms.masks[module][row], (THUMB, THUMB)), scale.low, scale.high, colours)
            truth, guess = ms.classes[ms.labels[row]], ms.classes[ms.predictions[row]]
            mark = "✓" if ms.correct[row] else "✗"
            st.image(maps.overlay(picture, heat, alpha) if overlaid else heat, width="stretch")
            if st.button("Open in Explore", key=f"dataset_open_{ms.index[row]}", icon=":material/search:",
                         width="stretch"):
                tools.pick(listing.read(int(ms.index[row])), f"{name}/{result.names[row]}",
                           f"true class {truth}, predicted {guess}")
                st.switch_page("views/explore.py")
            st.caption(f"#{ms.index[row]} · {truth} → {guess} {mark} · p {ms.confidence[row]:.2f} · "
                       f"{STAT_SHORT[stat]} {stats[stat][row]:.3f}")
if len(chunk):
    components.colorbar(scale, colours, note=f"one scale for every thumbnail on this page: {scale.description}",
                        under_picture=False)
    st.caption(f"Mask = channel mean of M, stage {choice.stage} module {choice.index} ({h}×{w}), upsampled "
               "bilinearly to the picture." + (f" Overlay opacity {alpha:.2f}." if overlaid else ""))
else:
    st.info("No image passes these filters.")

# --------------------------------------------------------------------------------------- class means
st.subheader(f"Per-class mean masks, stage {choice.stage} module {choice.index}")
means = ms.class_means[module][present]
class_scale = shared_scale(means, quantity, contrast, "the class means")
class_colours = maps.cmap_for(class_scale, components.cmap("mask"), quantity)  # type: ignore[arg-type]
for first in range(0, len(present), COLUMNS):
    for column, c in zip(st.columns(COLUMNS), present[first : first + COLUMNS]):
        with column:
            heat = maps.colorize(maps.upsample(ms.class_means[module][c], (THUMB, THUMB)), class_scale.low,
                                 class_scale.high, class_colours)
            correct = float(ms.correct[ms.labels == c].mean())
            st.image(heat, caption=f"{ms.classes[c]} (n = {ms.class_counts[c]}, top-1 {correct:.0%})", width="stretch")
components.colorbar(class_scale, class_colours, note=f"one scale for every class mean: {class_scale.description}",
                    under_picture=False)
st.caption(f"Mean over the images of each true class of the channel-mean mask at {h}×{w}.")
st.caption(f"⏱ Page computed in {(time.perf_counter() - start) * 1000:.0f} ms, of which {result.seconds:.2f} s for "
           f"the masks (computed once per model, dataset, split and limit, in chunks of {tools.CHUNK} images)")
