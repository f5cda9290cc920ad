"""Backbones: the torchvision and timm registry, checkpoints and state dicts, the table and catalog of known
backbones, augmentations, and the features (chosen layers, pooled) a backbone gives."""
