"""Image encoding for outputs."""
