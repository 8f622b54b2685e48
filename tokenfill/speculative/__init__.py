"""Speculative decoding: draft trees built from free drafters, verified in one pass each."""
