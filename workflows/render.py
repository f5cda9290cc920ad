"""``featurebank report RUN_DIR``: render a run folder's report.html again, whichever workflow wrote it (``cv --out``
in ``classifiers``, or ``finetune`` here), from its report.json alone."""

from __future__ import annotations

import os

from classifiers.report import html as cv_page
from embedder.kernel.errors import FileProblem

from .finetune import report as finetune_page


def write_html(run_dir: str, root: str | None = None) -> str:
    """Render ``run_dir/report.html``; ``root``: where a cv run's images are now, if they moved. Returns its path."""
    d = cv_page.read_run(run_dir)
    if cv_page.is_cv_report(d):
        return cv_page.write_html(run_dir, root)
    if finetune_page.is_finetune_report(d):
        try:
            return finetune_page.write_html(run_dir)
        except cv_page.RENDER_ERRORS as exc:  # a report.json edited or damaged inside: one line, nothing written
            raise cv_page.damaged_report(run_dir, exc) from None
    raise FileProblem(f"{os.path.join(run_dir, 'report.json')} is not a report of featurebank cv or finetune")
