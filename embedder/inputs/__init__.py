"""Inputs: folders, manifests and lists of images (``sources``), decoding, tar and Parquet samples, and the
batches that feed an engine."""
