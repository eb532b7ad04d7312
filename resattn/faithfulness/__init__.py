"""Is a map faithful to the model? Deletion and insertion (Petsiuk et al., *RISE*, BMVC 2018) and the model
randomisation sanity check (Adebayo et al., *Sanity Checks for Saliency Maps*, NeurIPS 2018), for the soft mask
and the attributions side by side.

What lives where (each module's docstring gives its choices and caveats):

* :mod:`~resattn.faithfulness.saliency`: the maps under test (soft mask, Grad-CAM, Integrated Gradients, ...)
  and the controls they must beat (a random map, a centre prior), for one input;
* :mod:`~resattn.faithfulness.deletion`: deletion and insertion curves and their AUCs, for one image and over a
  dataset;
* :mod:`~resattn.faithfulness.randomisation`: the cascade that re-initialises the weights block by block, and how
  far each map then still resembles the trained model's (Spearman ρ, SSIM);
* :mod:`~resattn.faithfulness.cli`: ``python -m resattn.faithfulness deletion | sanity``.

Each module imports only those listed before it. Everything public is re-exported here.
"""

from .cli import build_parser, main
from .deletion import (
    DEFAULT_STEPS,
    Curve,
    DatasetFaithfulness,
    Kind,
    blur_sigma_for,
    deletion_insertion,
    faithfulness_curves,
    faithfulness_over_dataset,
    gaussian_blur,
    pixel_order,
)
from .randomisation import (
    CASCADE,
    SANITY_MAPS,
    SanityResult,
    SanityStep,
    _ssim,  # noqa: F401 - the SSIM fallback without scikit-image, which the tests compare with scikit-image's
    _unit,  # noqa: F401
    cascade_blocks,
    randomisation_cascade,
    rank_correlation,
    reinitialise_,
    sanity_check,
    ssim,
)
from .saliency import DELETION_MAPS, MAP_NAMES, centre_prior, mask_map, random_map, saliency_maps

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
    "random_map",
    "centre_prior",
    "mask_map",
    "saliency_maps",
    "deletion_insertion",
    "faithfulness_curves",
    "DatasetFaithfulness",
    "faithfulness_over_dataset",
    "cascade_blocks",
    "reinitialise_",
    "randomisation_cascade",
    "ssim",
    "rank_correlation",
    "SanityStep",
    "SanityResult",
    "sanity_check",
    "build_parser",
    "main",
]
