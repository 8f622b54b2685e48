"""tokenfill: code completion at the cursor from a local language model."""

__version__ = "0.1.0"
