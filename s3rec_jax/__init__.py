"""S3-Rec in JAX: self-supervised pre-training for sequential recommendation."""

__version__ = "0.1.0"
