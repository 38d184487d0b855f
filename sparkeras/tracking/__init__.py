"""Experiment tracking and monitoring: MLflow runs, TensorBoard scalars and learning-curve plots."""
