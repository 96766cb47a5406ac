"""vision_sae_lens: SAELens for vision transformers."""
