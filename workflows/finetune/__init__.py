"""Fine-tuning: unfreeze the last blocks of a pretrained backbone and train them with a new head, end to end, and
score it fairly against the frozen linear probe (and, on request, the same network trained from scratch).

The images are first embedded into the cache like any ``extract`` (penultimate layer, the weights'
preprocessing). That gives, at no extra decoding cost later: the list of good images (bad files are skipped and
reported there), the linear-probe baseline (the zoo's ``logreg``), and the head's initialization (the probe's
weights, standardization folded in). Training then decodes images again, since every epoch sees another random
crop. The epoch and early stopping are chosen on validation images; ``test`` images, when given, are embedded and
scored only after training, so that the comparison is reported on images nothing was selected on.

Every epoch writes ``last.pt`` (model, optimizer, scheduler, history: ``--resume`` continues from it on the same
trajectory) and, when validation improves, ``best.pth``: a state dict with the class names and preprocessing,
which ``extract --weights`` and ``predict --head`` take like any checkpoint.

The parts: ``surgery`` (blocks, freezing, BatchNorm, the head), ``probe`` (the baseline and the head's start),
``split`` (embedding, groups, train/val/test kept apart), ``loop`` (training, evaluation, checkpoints),
``report`` (comparison rows, logs, report files), ``run`` (``finetune``, all of it in order).
"""
from .loop import TrainingConfig, TrainingOptions, evaluate_images, export_weights, train_loop
from .probe import fold_linear, linear_probe
from .run import FinetuneResult, finetune
from .split import split_rows
from .surgery import (add_head_dropout, block_names, freeze, param_groups, replace_head, set_train_mode,
                      unfrozen_blocks)

__all__ = ["FinetuneResult", "TrainingConfig", "TrainingOptions", "add_head_dropout", "block_names", "evaluate_images",
           "export_weights", "finetune", "fold_linear", "freeze", "linear_probe", "param_groups", "replace_head", "set_train_mode",
           "split_rows", "train_loop", "unfrozen_blocks"]
