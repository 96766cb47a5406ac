"""Look at what an SAE's latents mean on images.

- :func:`encode_images` / :func:`decode`: latents shaped like the image (b, grid_h, grid_w, d_sae), and back.
- :func:`heatmap`: one latent over the original image (the backbone's resize/crop undone).
- :func:`top_activating`: the top-k images of every latent, streaming over a store or raw images.
- :func:`feature_stats`: frequency, activation quantiles, dead/dense latents, per-label selectivity.
- :func:`ablate` / :func:`steer` / :func:`edit_latents`: edit latents in the forward pass (error term kept)
  and measure the change in the model's output.
- :func:`build_browser`: a static HTML feature browser (``vision-sae-lens analyze``).
- :func:`name_latents`: a name, runner-ups and a detection AUROC for every latent, from an image-text
  model or the labels; :func:`write_names` / :func:`read_names` for ``names.json``
  (``vision-sae-lens explain``).
"""

from typing import TYPE_CHECKING

from vision_sae_lens._lazy import lazy_exports

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
    "name_latents",
    "write_names",
    "read_names",
    "LatentNames",
    "ImageFeatures",
    "TopActivations",
    "FeatureStats",
    "InterventionResult",
    "InputGeometry",
    "input_geometry",
    "grid_to_image",
    "overlay",
]

if TYPE_CHECKING:
    from vision_sae_lens.analysis.browser import build_browser
    from vision_sae_lens.analysis.geometry import InputGeometry, grid_to_image, input_geometry, overlay
    from vision_sae_lens.analysis.images import ImageFeatures, decode, encode_images, heatmap, heatmap_array
    from vision_sae_lens.analysis.interventions import InterventionResult, ablate, edit_latents, steer
    from vision_sae_lens.analysis.names_file import read_names, write_names
    from vision_sae_lens.analysis.naming import LatentNames, name_latents
    from vision_sae_lens.analysis.stats import FeatureStats, feature_stats
    from vision_sae_lens.analysis.topk import TopActivations, top_activating

__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "encode_images": "vision_sae_lens.analysis.images",
        "decode": "vision_sae_lens.analysis.images",
        "heatmap": "vision_sae_lens.analysis.images",
        "heatmap_array": "vision_sae_lens.analysis.images",
        "top_activating": "vision_sae_lens.analysis.topk",
        "feature_stats": "vision_sae_lens.analysis.stats",
        "ablate": "vision_sae_lens.analysis.interventions",
        "steer": "vision_sae_lens.analysis.interventions",
        "edit_latents": "vision_sae_lens.analysis.interventions",
        "build_browser": "vision_sae_lens.analysis.browser",
        "name_latents": "vision_sae_lens.analysis.naming",
        "write_names": "vision_sae_lens.analysis.names_file",
        "read_names": "vision_sae_lens.analysis.names_file",
        "LatentNames": "vision_sae_lens.analysis.naming",
        "ImageFeatures": "vision_sae_lens.analysis.images",
        "TopActivations": "vision_sae_lens.analysis.topk",
        "FeatureStats": "vision_sae_lens.analysis.stats",
        "InterventionResult": "vision_sae_lens.analysis.interventions",
        "InputGeometry": "vision_sae_lens.analysis.geometry",
        "input_geometry": "vision_sae_lens.analysis.geometry",
        "grid_to_image": "vision_sae_lens.analysis.geometry",
        "overlay": "vision_sae_lens.analysis.geometry",
    },
)
