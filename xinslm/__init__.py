"""xinslm: train a small chat language model reproducibly, as DVC stages."""

__version__ = "0.1.0"
