"""Fine-tuning: unfreeze the last blocks of a pretrained backbone and train them with a new head, end to end, and
score it fairly against the frozen linear probe (and, on request, the same network trained from scratch).

The images are first embedded into the cache like any ``extract`` (penultimate layer, the weights'
preprocessing; with ``--augment views``, by the views pass instead, the same rows without an extraction:
``center_pass``). That gives, at no extra decoding cost later: the list of good images (bad files are skipped and
reported there), the linear-probe baseline (the zoo's ``logreg``), and the head's initialization (the probe's
weights, standardization folded in). Training then decodes images again, since every epoch sees another random
crop. The epoch and early stopping are chosen on validation images; ``test`` images, when given, are embedded and
scored only after training, so that the comparison is reported on images nothing was selected on.

Every epoch writes ``last.pt`` (model, optimizer, scheduler, history: ``--resume`` continues from it on the same
trajectory) and, when validation improves, ``best.pth``: a state dict with the class names and preprocessing,
which ``extract --weights`` and ``predict --head`` take like any checkpoint.

The parts: ``options`` (what a run is asked, checked before anything is done), ``surgery`` (blocks, freezing, BatchNorm, the head), ``probe`` (the baseline and the head's start),
``split`` (embedding, groups, train/val/test kept apart), ``loop`` (training, evaluation, checkpoints),
``report`` (comparison rows, logs, report files), ``run`` (``finetune``, all of it in order); for ``--augment
views``: ``fixed_views``, ``trunk`` (the cut and the store of its rows), ``center_pass`` (the probe's features from
the pass), ``cached_loop`` (the epochs on the stored rows).

The names below are imported on first use, so that the command line can build ``FinetuneOptions`` without torch.
"""

from typing import TYPE_CHECKING

from embedder.kernel.lazy import lazy_attributes, lazy_dir

_EXPORTS = {
    "TrainingConfig": "loop",
    "TrainingState": "loop",
    "evaluate_images": "loop",
    "export_weights": "loop",
    "train_loop": "loop",
    "FinetuneOptions": "options",
    "TrainingOptions": "options",
    "fold_linear": "probe",
    "linear_probe": "probe",
    "FinetuneResult": "run",
    "finetune": "run",
    "split_rows": "split",
    "add_head_dropout": "surgery",
    "block_names": "surgery",
    "freeze": "surgery",
    "param_groups": "surgery",
    "replace_head": "surgery",
    "set_train_mode": "surgery",
    "unfrozen_blocks": "surgery",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_attributes(__name__, _EXPORTS)
__dir__ = lazy_dir(globals(), _EXPORTS)

if TYPE_CHECKING:  # the real names, for type checkers and editors; at run time each is imported on first use
    from .loop import TrainingConfig, TrainingState, evaluate_images, export_weights, train_loop
    from .options import FinetuneOptions, TrainingOptions
    from .probe import fold_linear, linear_probe
    from .run import FinetuneResult, finetune
    from .split import split_rows
    from .surgery import (
        add_head_dropout,
        block_names,
        freeze,
        param_groups,
        replace_head,
        set_train_mode,
        unfrozen_blocks,
    )
