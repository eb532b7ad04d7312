"""Learn: a guided tour of the paper with the loaded network: equations, architecture, mask branch, knock-out."""

import time

import numpy as np
import streamlit as st

from resattn import maps, paper
from resattn.attention import ATTENTIONS, CHANNEL_EPS, SPATIAL_EPS, fixed_by_activation

from ui import components, faithful_panels, predictions, state

st.title("Learn: Residual Attention Network (Wang et al., CVPR 2017)")
start = time.perf_counter()

st.header("1. Attention residual learning")
st.markdown("Each attention module splits into a **trunk** branch T(x), which processes features, and a **soft "
            "mask** branch M(x) of the same shape, which weighs them (i: position, c: channel). For mixed and "
            "spatial attention (sigmoid, f₁ and f₃) M(x) ∈ [0, 1], as the paper writes; **channel attention (f₂) "
            "gives M(x) ∈ [−1, 1]** (see §2).")
left, right = st.columns(2)
with left:
    st.markdown("**Naive attention learning (NAL), Eq. 1**")
    st.latex(r"H_{i,c}(x) = M_{i,c}(x)\cdot T_{i,c}(x)")
    st.markdown("Repeated multiplication by mask values below 1 (all of them, for sigmoid masks) shrinks deep "
                "features, and the mask also gates the trunk's gradient (Eq. 2):")
    st.latex(r"\frac{\partial\, M(x,\theta)\,T(x,\phi)}{\partial \phi} = M(x,\theta)\,\frac{\partial T(x,\phi)}{\partial\phi}")
with right:
    st.markdown("**Attention residual learning (ARL), Eq. 3**")
    st.latex(r"H_{i,c}(x) = \bigl(1 + M_{i,c}(x)\bigr)\cdot F_{i,c}(x)")
    st.markdown("With M ≈ 0 the module passes the trunk features through (an identity fallback), so stacking "
                "modules does not erode features. The gain 1 + M lies in **[1, 2] for mixed and spatial "
                "attention** and in **[0, 2] for channel attention**, whose M can be negative.")
# Table 3 from resattn.paper (ARL, NAL error per depth), so the page and the Compare page quote one source
table3 = {depth: [paper.paper_result(f"attention{depth}_cifar", "mixed", rule).error for rule in ("arl", "nal")]
          for depth in (56, 92, 128, 164)}
st.markdown("**The paper's Table 3** (CIFAR-10 top-1 error, %): "
            + "; ".join(f"Attention-{d} ARL {arl:.2f}, NAL {nal:.2f}" for d, (arl, nal) in table3.items())
            + f". NAL is worse at every depth, by {table3[56][1] - table3[56][0]:.2f} points at Attention-56 and "
              f"{table3[164][1] - table3[164][0]:.2f} at Attention-164. The Compare page puts the shipped checkpoints "
              "beside the paper's figures and says which of them can be compared.")

st.header("2. The three mask activations (§3.3)")
st.markdown("x is the mask branch's output before the activation (the second 1×1 conv); x_i ∈ ℝ^C its channel "
            "vector at position i.")
a1, a2, a3 = st.columns(3)
with a1:
    st.markdown("**Mixed, f₁** (default)")
    st.latex(r"f_1(x_{i,c}) = \frac{1}{1 + e^{-x_{i,c}}}")
with a2:
    st.markdown("**Channel, f₂**")
    st.latex(r"f_2(x_{i,c}) = \frac{x_{i,c}}{\sqrt{\sum_{c'} x_{i,c'}^2 + \varepsilon_2^2}}")
with a3:
    st.markdown("**Spatial, f₃**")
    st.latex(r"f_3(x_{i,c}) = \frac{1}{1 + e^{-z_{i,c}}}")
    st.latex(r"z_{i,c} = \frac{x_{i,c} - \mathrm{mean}_c}{\sqrt{\mathrm{var}_c + \varepsilon_3}}")
# What the activation itself fixes, whatever the weights (resattn.attention, bounds checked in tests/test_model.py):
# a learned mask's mean or share above 0.5 tells something about the model only where the activation leaves it free.
st.info("**What the activation fixes before any training.** Mixed attention (f₁) is a sigmoid on each entry and "
        "fixes nothing: every entry can be anywhere in (0, 1). "
        + " ".join(fixed_by_activation(ATTENTIONS))
        + " So a spatial mask's mean near 0.5, or a channel mask's small share above 0.5, is the activation's "
          "doing, not something the model learned.")
st.warning(
    "**What the paper leaves unspecified: choices made here** (the paper is silent on these)\n\n"
    f"- f₂: ε₂ = {CHANNEL_EPS:g} inside the norm (the paper gives none). f₂ is **not** in [0, 1]: values lie in "
    "[−1, 1] with squares summing to 1 over channels (≈ 1/√C each), so under ARL (1 + M) stays close to 1.\n"
    f"- f₃: mean_c and var_c are computed **per sample over H×W** with the population (biased) variance and "
    f"ε₃ = {SPATIAL_EPS:g} (the paper does not say per sample or per batch).\n"
    "- No reference implementation (official Caffe, tengshaofeng, GluonCV) contains f₂ or f₃.\n"
    "- **The CIFAR architecture is an unverified reconstruction**: the paper gives no CIFAR table. Here: 3×3 stem "
    "with 16 channels, stages 64/128/256 wide at 32/16/8 px, mask pools 2/1/0, one strided unit before and one "
    "unit after each stage's modules (depth 36m + 20).\n"
    "- Mask upsampling is bilinear with align_corners=True, inferred (not verified) from the Caffe Interp layer.\n"
    "- **Max-pooling** (stem and every mask level) is the official definition: 3×3, stride 2, **no padding, sizes "
    "rounded up** (Caffe's ceil mode), so 56 → 28 → 14 → 7 and odd maps 7 → 3. Most PyTorch ports pad by 1, which "
    "shifts every window by a pixel. Checkpoints trained before this fix (architecture revision 1) are rebuilt "
    "with the padding they were trained with.\n"
    "- Each **skip connection** of the mask is one residual unit, whatever r is (it matters only for "
    "Attention-452's r = 3; the paper does not say, GluonCV also uses one).\n"
    "- **Input preprocessing** comes from the checkpoint: photos are resized (shorter side = input/0.875) and "
    "centre-cropped, CIFAR images are used as they are, then normalised with the training statistics; the Explore "
    "page shows the exact input tensor."
)

ctx = components.require_context()

st.header("3. The loaded network, with live tensor shapes")
shapes = state.layer_shapes(ctx.entry.key, ctx.model, ctx.meta)
config = getattr(ctx.model, "config", None)
if config is not None:
    st.markdown(f"`{ctx.meta['model']}` — {config.variant} topology, modules per stage {tuple(config.modules)}, "
                f"p={config.p}, t={config.t}, r={config.r}, mask pools {tuple(config.pools)}, "
                f"{config.attention} attention, {config.learning.upper()}, trunk depth {config.depth}.")
# Top to bottom, one row per stage: labels stay legible at projector widths (the chart also opens full screen).
lines = ['digraph G { rankdir=TB; nodesep=0.15; ranksep=0.25; '
         'node [shape=box, fontsize=16, fontname="Helvetica", style="rounded,filled", fillcolor="#eef3fb"];']
groups: dict[str, list[int]] = {}
for i, (name, kind, shape) in enumerate(shapes):
    fill = ', fillcolor="#ffe4c4"' if kind == "AttentionModule" else ""
    dims = "×".join(str(d) for d in shape[1:])
    short = {"PreActBottleneck": "residual unit", "AttentionModule": "attention module"}.get(kind, kind)
    lines.append(f'n{i} [label="{name}\\n{short}\\n{dims}"{fill}];')
    groups.setdefault(name.split(".")[0] if name.startswith("stage") else f"_{i}", []).append(i)
for number, members in groups.items():
    if len(members) > 1:
        lines.append("{ rank=same; " + " ".join(f"n{m};" for m in members) + " }")
for i in range(1, len(shapes)):
    lines.append(f"n{i - 1} -> n{i};")
lines.append("}")
st.graphviz_chart("\n".join(lines), width="stretch")
st.dataframe([{"layer": n, "kind": k, "output shape": " × ".join(map(str, s))} for n, k, s in shapes],
             hide_index=True)

st.header("4. Inside one soft mask branch")
data = ctx.trace(with_path=True)
if not data.modules:
    st.info("This model has no attention modules.")
    st.stop()
record = data.module(ctx.stage, ctx.index)
st.markdown(f"Stage {ctx.stage}, module {ctx.index} (`{record['name']}`): every map along the bottom-up "
            "(max-pool + units) / top-down (bilinear upsampling + skip) path, channel mean, then the activation.")
contrast = components.contrast_picker("learn")
path = list(record["mask_path"]) + [("mask M (after the activation)", record["mask"])]
for first in range(0, len(path), 4):
    for column, (label, tensor) in zip(st.columns(4), path[first : first + 4]):
        with column:
            reduced = maps.reduce_channels(tensor, "mean")
            stats = maps.describe(reduced)
            st.markdown(f"**{label}**  \n{tensor.shape[0]}×{tensor.shape[1]}×{tensor.shape[2]}")
            if stats.ok:
                is_mask = label.startswith("mask M")
                quantity = ctx.mask_scale if is_mask else "feature"
                drawn = maps.heat(reduced, quantity, contrast, components.cmap("mask" if is_mask else "feature"),
                                  (160, 160))
                components.map_image(drawn.picture, drawn.scale, drawn.cmap, caption=stats.summary())
            else:
                st.warning(stats.problem)

st.header("5. Knock-out: what if the mask were different?")
st.markdown("Replace this module's mask by **0** (under ARL the module passes T through), **1** (uniform maximum "
            "weight), its **spatial mean** per channel (keeps *how much*, removes *where*) or **another image's "
            "mask** at this module (a real mask, with a mask's statistics and layout, that knows nothing about this "
            "image), and see how the prediction changes.")
mode = st.radio("Set the mask to", ["zero", "one", "mean", "other"], key="knockout", horizontal=True,
                format_func={"zero": "0", "one": "1", "mean": "spatial mean", "other": "another image's mask"}.get)
other = components.other_image(ctx, "knockout_other", "The other image") if mode == "other" else None
if mode != "other" or other is not None:
    changed = ctx.trace(knockout=(ctx.stage, ctx.index, mode), other_hash=other[2] if other else None,
                        _other=other[0] if other else None)
    before, after = data.probs, changed.probs
    top = [int(i) for i in np.argsort(-before)[:5]]
    st.dataframe([{"class": ctx.class_name(i), "before": float(before[i]), "after": float(after[i]),
                   "change": float(after[i] - before[i])} for i in top], hide_index=True)
    predictions.show(ctx.entry, ctx.meta, before)
    new_top = int(np.argmax(after))
    eps = 1e-12
    kl = float(np.sum(before * (np.log(before + eps) - np.log(after + eps))))
    st.metric("Top-1 after knock-out", ctx.class_name(new_top),
              delta="unchanged" if new_top == top[0] else f"was {ctx.class_name(top[0])}",
              delta_color="off" if new_top == top[0] else "inverse")
    st.caption(f"KL(before ‖ after) = {kl:.4f} nats. One image is an anecdote: `python -m resattn.faithfulness "
               "knockout --checkpoint C --data D` measures every module and replacement over a dataset (change in "
               "accuracy and in the true class's logit, with paired 95% intervals).")
st.caption(f"⏱ Page computed in {(time.perf_counter() - start) * 1000:.0f} ms")
faithful_panels.sanity_panel(ctx)
