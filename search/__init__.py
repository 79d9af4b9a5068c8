"""Hyperparameter search over the pipeline: YAML spaces, Ax-BoTorch, Ray Tune, W&B."""
