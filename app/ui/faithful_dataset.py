"""Deletion and insertion over many images of a configured dataset, for the Attribution page: every map and control
scored on the same images, and paired tests (image by image) between any two of them.

One image's curves say little: a map can beat another on one image and lose on the next. Over a dataset
(``RESATTN_DATASETS``; the test split, ``limit`` images spread evenly over it, so over every class) each image is
scored by every map, and two maps are compared by their per-image AUC differences: mean difference, a 95% t
interval, the paired t-test and the Wilcoxon signed-rank test (:mod:`resattn.faithfulness.stats`). The run is
:func:`resattn.faithfulness.faithfulness_over_dataset`, the same as ``python -m resattn.faithfulness deletion``;
results are shared by every session (``faithful_panels.results``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st
import torch

from resattn import faithfulness as F
from resattn import images, masks
from resattn.data import DataError
from resattn.preprocess import Preprocessing

from . import components, faithful_panels
from . import dataset_tools as tools

#: How many images the panel scores unless told otherwise, and its range.
DEFAULT_LIMIT = 40
LIMITS = (4, 300)


def dataset_images(key: str, path: str, limit: int, meta: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor,
                                                                                     np.ndarray, str]:
    """``limit`` images spread over the test (or val) split of a dataset, cropped as the model sees them: uint8
    N×3×H×W, labels in the model's classes, positions in the split and the split's name. Files that cannot be
    decoded are left out; raises ``DataError`` or ``ValueError`` (classes the model does not know)."""
    for split in ("test", "val"):
        try:
            listing = tools.listing(key, path, split)
            break
        except DataError:
            continue
    else:
        raise DataError(f"{path} has neither a test/ nor a val/ split")
    mapping = tools.label_map(listing.classes, meta)
    prep = Preprocessing.from_meta(meta)
    positions = masks.spread_indices(len(listing), limit)
    kept, pictures, labels = [], [], []
    for position, (name, data) in zip(positions, tools.read_positions(listing, positions)):
        if isinstance(data, Exception):
            continue
        try:
            picture = prep.crop(images.load_image(data, name))
        except (images.ImageError, OSError, ValueError):
            continue
        kept.append(int(position))
        pictures.append(np.asarray(picture, np.uint8))
        labels.append(mapping[listing.items[position][1]])
    if len(kept) < 2:
        raise DataError(f"fewer than two images of {path} could be decoded")
    batch = torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).contiguous()
    return batch, torch.tensor(labels, dtype=torch.int64), np.array(kept, np.int64), listing.split


def _summary_rows(result: F.DatasetFaithfulness) -> list[dict[str, Any]]:
    rows = []
    for name, row in result.summary().items():
        rows.append({"map": F.MAP_NAMES[name], "deletion AUC (lower is better)": row["deletion_mean"],
                     "± SE (deletion)": row["deletion_sem"], "insertion AUC (higher is better)": row["insertion_mean"],
                     "± SE (insertion)": row["insertion_sem"]})
    return rows


def _pair_rows(result: F.DatasetFaithfulness, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    rows = []
    for a, b in pairs:
        row: dict[str, Any] = {"A − B": f"{F.MAP_NAMES[a]} − {F.MAP_NAMES[b]}"}
        for kind in ("deletion", "insertion"):
            d = result.paired(a, b, kind)
            row.update({f"{kind}: mean A − B": d.mean, f"{kind}: 95% interval": f"[{d.low:+.3f}, {d.high:+.3f}]",
                        f"{kind}: p (t)": d.p_t, f"{kind}: p (Wilcoxon)": d.p_wilcoxon})
        rows.append(row)
    return rows


def dataset_panel(ctx: components.Context) -> None:
    """Every map and control over ``limit`` images of a configured dataset, with paired tests (on demand)."""
    st.subheader("Over a dataset: every map image by image, with paired tests")
    names = faithful_panels.map_names(ctx, F.DELETION_MAPS)
    reference = faithful_panels.reference_map(ctx)
    datasets = tools.configured_datasets()
    command = ("`python -m resattn.faithfulness deletion --checkpoint C --data D --limit 100` does the same from a "
               "terminal and prints the paired tests.")
    if not datasets:
        st.info("No dataset is configured (`RESATTN_DATASETS=name=path,...`). " + command)
        return
    for widget, fallback in (("faithful_pair_a", reference), ("faithful_pair_b", "other")):
        if st.session_state.get(widget) not in names:  # e.g. the mask, for a model without attention modules
            st.session_state[widget] = fallback if fallback in names else names[0]
    c1, c2, c3, c4 = st.columns([2, 1, 2, 2])
    name = c1.selectbox("Dataset", list(datasets), key="faithful_dataset")
    limit = int(c2.number_input("Images", *LIMITS, step=10, key="faithful_dataset_limit"))
    a = c3.selectbox("Map A", names, key="faithful_pair_a", format_func=F.MAP_NAMES.get)
    b = c4.selectbox("Map B", names, key="faithful_pair_b", format_func=F.MAP_NAMES.get)
    st.caption("Each image is scored for the model's own prediction on it; the controls are made from the "
               f"{F.MAP_NAMES[reference]} (another image's map: image i gets the map of another image of the same "
               "sample, a random derangement). The paired test compares A and B on the same images: it removes "
               "each image's own difficulty from the comparison. " + command)
    if not st.toggle(f"Score every map on {limit} images (seconds per image)", key="faithful_dataset_run"):
        return
    path = datasets[name]
    key = ("deletion_dataset", ctx.entry.key, tools.source_key(name, path), limit, ctx.stage, ctx.index,
           tuple(names), faithful_panels.ig_steps_setting(), reference)

    def compute(progress: faithful_panels.Progress) -> F.DatasetFaithfulness:
        batch, labels, positions, split = dataset_images(tools.source_key(name, path), path, limit, ctx.meta)
        result = F.faithfulness_over_dataset(ctx.model, ctx.meta, batch, labels, ctx.stage, ctx.index, names,
                                             positions=positions, ig_steps=faithful_panels.ig_steps_setting(),
                                             progress=progress, reference=reference)
        result.settings["split"] = split
        return result

    try:
        result: F.DatasetFaithfulness = faithful_panels.run_shared(key, compute,
                                                                   f"Deletion and insertion over {name}:")
    except (DataError, ValueError) as exc:
        st.error(f"Cannot score {name} with this model: {exc}")
        return
    summary = _summary_rows(result)
    st.dataframe(summary, hide_index=True, column_config={
        k: st.column_config.NumberColumn(format="%.3f") for k in summary[0] if k != "map"})
    chosen = [(a, b)] if a != b else []
    pairs = chosen + [p for p in F.default_pairs(result.names, reference) if p not in chosen]
    rows = _pair_rows(result, pairs)
    st.markdown(f"**Paired tests over the same {len(result.index)} images** (first row: A − B as chosen above; "
                "lower deletion and higher insertion AUC are better, so a map beats another with a negative "
                "deletion difference and a positive insertion difference)")
    st.dataframe(rows, hide_index=True, column_config={
        k: st.column_config.NumberColumn(format="%.3f") for k in rows[0] if "mean" in k or "p (" in k})
    st.caption(f"{len(result.index)} images of the {result.settings.get('split')} split of {name}, spread over it "
               "(so over every class); 95% intervals from the t distribution of the per-image differences; "
               "p-values from the paired t-test and the Wilcoxon signed-rank test. They measure which images were "
               "drawn, not seed-to-seed spread of training; the same choices and caveats as the one-image curves "
               "above (mean-colour baseline, also Integrated Gradients' own).")
