"""Is a map faithful to the model? Deletion and insertion (Petsiuk et al., *RISE*, BMVC 2018) and the model
randomisation sanity check (Adebayo et al., *Sanity Checks for Saliency Maps*, NeurIPS 2018), for the soft mask
and the attributions side by side.

What lives where (each module's docstring gives its choices and caveats):

* :mod:`~resattn.faithfulness.saliency`: the maps under test (soft mask, Grad-CAM, Integrated Gradients, ...)
  and the controls they must beat (another image's map, the inverted map, a random map as smooth as the map under
  test, pixel noise, a centre prior), for one input;
* :mod:`~resattn.faithfulness.stats`: paired comparisons, image by image (differences with t intervals, Wilcoxon;
  rates with McNemar's test);
* :mod:`~resattn.faithfulness.deletion`: deletion and insertion curves and their AUCs, for one image and over a
  dataset, with paired tests between any two maps;
* :mod:`~resattn.faithfulness.knockout`: the test that fits a class-agnostic gating map: each module's mask
  replaced (0, 1, its spatial mean, another image's) over a dataset, and the change in accuracy and true-class logit;
* :mod:`~resattn.faithfulness.randomisation`: the cascade that re-initialises the weights block by block, and how
  far each map then still resembles the trained model's (Spearman ρ signed and absolute, SSIM), for one image;
* :mod:`~resattn.faithfulness.sanity_summary`: that cascade over several images and seeds, with mean and spread;
* :mod:`~resattn.faithfulness.cli`: ``python -m resattn.faithfulness deletion | sanity | knockout``.

Each module imports only those listed before it. Everything public is re-exported here.
"""

from .cli import build_parser, main
from .deletion import (
    DEFAULT_STEPS,
    Curve,
    DatasetFaithfulness,
    Kind,
    blur_sigma_for,
    default_pairs,
    deletion_insertion,
    faithfulness_curves,
    faithfulness_over_dataset,
    gaussian_blur,
    pixel_order,
)
from .knockout import KNOCKOUT_MODES, KNOCKOUT_NAMES, DatasetKnockout, KnockoutEffect, knockout_over_dataset
from .randomisation import (
    CASCADE,
    SANITY_MAPS,
    SanityResult,
    SanityStep,
    _ssim,  # noqa: F401 - the SSIM fallback without scikit-image, which the tests compare with scikit-image's
    _unit,  # noqa: F401
    cascade_blocks,
    compared,
    randomisation_cascade,
    rank_correlation,
    reinitialise_,
    sanity_check,
    ssim,
)
from .saliency import (
    CONTROLS,
    DELETION_MAPS,
    MAP_NAMES,
    REFERENCE_CONTROLS,
    centre_prior,
    derangement,
    inverted_map,
    mask_map,
    random_map,
    saliency_maps,
    smooth_random_map,
)
from .sanity_summary import SanitySummary, sanity_over_images
from .stats import PairedDifference, PairedRates, paired_difference, paired_rates

__all__ = [
    "DEFAULT_STEPS",
    "DELETION_MAPS",
    "SANITY_MAPS",
    "MAP_NAMES",
    "CASCADE",
    "Kind",
    "Curve",
    "blur_sigma_for",
    "gaussian_blur",
    "pixel_order",
    "CONTROLS",
    "REFERENCE_CONTROLS",
    "random_map",
    "smooth_random_map",
    "inverted_map",
    "derangement",
    "centre_prior",
    "mask_map",
    "saliency_maps",
    "deletion_insertion",
    "faithfulness_curves",
    "DatasetFaithfulness",
    "faithfulness_over_dataset",
    "default_pairs",
    "PairedDifference",
    "PairedRates",
    "paired_difference",
    "paired_rates",
    "KNOCKOUT_MODES",
    "KNOCKOUT_NAMES",
    "KnockoutEffect",
    "DatasetKnockout",
    "knockout_over_dataset",
    "cascade_blocks",
    "reinitialise_",
    "randomisation_cascade",
    "ssim",
    "rank_correlation",
    "SanityStep",
    "SanityResult",
    "sanity_check",
    "compared",
    "SanitySummary",
    "sanity_over_images",
    "build_parser",
    "main",
]
