"""Learned models: the shared backbone, the one-shot matcher and the contour regressor."""
