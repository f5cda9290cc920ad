"""Workflows that use both lower layers: fine-tuning a backbone (``finetune``) and deploying a model as one ONNX
file (``deploy``). They sit above ``classifiers`` and ``embedder``; only ``cli.py`` sits above them."""
