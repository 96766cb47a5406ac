"""Look at what an SAE's latents mean on images.

- :func:`encode_images` / :func:`decode`: latents shaped like the image (b, grid_h, grid_w, d_sae), and back.
- :func:`heatmap`: one latent over the original image (the backbone's resize/crop undone).
- :func:`top_activating`: the top-k images of every latent, streaming over a store or raw images.
- :func:`feature_stats`: frequency, activation quantiles, dead/dense latents, per-label selectivity.
- :func:`ablate` / :func:`steer` / :func:`edit_latents`: edit latents in the forward pass (error term kept)
  and measure the change in the model's output.
- :func:`build_browser`: a static HTML feature browser (``vision-sae-lens analyze``).
"""

from vision_sae_lens.analysis.browser import build_browser
from vision_sae_lens.analysis.geometry import InputGeometry, grid_to_image, input_geometry, overlay
from vision_sae_lens.analysis.images import ImageFeatures, decode, encode_images, heatmap, heatmap_array
from vision_sae_lens.analysis.interventions import InterventionResult, ablate, edit_latents, steer
from vision_sae_lens.analysis.stats import FeatureStats, feature_stats
from vision_sae_lens.analysis.topk import TopActivations, top_activating

__all__ = [
    "encode_images",
    "decode",
    "heatmap",
    "heatmap_array",
    "top_activating",
    "feature_stats",
    "ablate",
    "steer",
    "edit_latents",
    "build_browser",
    "ImageFeatures",
    "TopActivations",
    "FeatureStats",
    "InterventionResult",
    "InputGeometry",
    "input_geometry",
    "grid_to_image",
    "overlay",
]
