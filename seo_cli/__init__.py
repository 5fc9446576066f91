"""seo-cli: train, evaluate, compare and tune PyTorch models for SEO data."""

__version__ = "0.1.0"
