"""Inference: the Annotator (one image, cached features), baselines, and tiled runs."""
