"""The reproducible beta-VAE lab for CIFAR-10: DVC stages, MLflow runs, figures and a measured report."""

__version__ = "0.1.0"
