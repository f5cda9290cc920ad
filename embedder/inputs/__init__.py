"""Inputs: folders, manifests and lists of images (``sources``), decoding, tar shards and Parquet files
(``shards``, ``samples``), and the
batches that feed an engine."""
