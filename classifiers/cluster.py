"""Cross-validation on a Dask cluster, through joblib's Dask backend: the cluster users already run, no pool of our own.

``on_cluster(address)`` connects a client to a running scheduler; inside it, ``layer_tasks(arrays)`` makes every
joblib ``Parallel`` call of one layer run on the cluster, with that layer's arrays broadcast to the workers once
and the tasks given their futures (joblib would otherwise scatter them again for every classifier). Without an address both are no-ops and nothing
of Dask is imported, so a local run does not pay for it or need it installed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from embedder.kernel.errors import FeaturebankError, first_line

INSTALL = 'pip install -e ".[dask]"'


@dataclass(frozen=True)
class Cluster:
    """A connected Dask client and what it has: the scheduler's address and its worker threads."""

    client: Any  # a dask.distributed.Client; Dask is imported only when a scheduler is given
    address: str
    workers: int
    threads: int
    held: list = field(default_factory=list, compare=False, repr=False)  # the current layer's scattered futures

    def describe(self) -> str:
        return f"Dask scheduler {self.address} ({self.workers} workers, {self.threads} threads)"


def _import_dask():
    try:
        from dask.distributed import Client  # noqa: F401  (the backend below needs distributed too)
    except ImportError:
        raise FeaturebankError(f"--scheduler needs Dask: install it with {INSTALL}") from None
    return Client


@contextlib.contextmanager
def on_cluster(address: str | None, timeout: float = 20.0):
    """A ``Cluster`` connected to the Dask scheduler at ``address`` (``tcp://host:8786``, or a ``Client``-style
    address), closed on exit; ``None`` when there is no address (run locally)."""
    if not address:
        yield None
        return
    Client = _import_dask()
    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        first = first_line(exc)
        raise FeaturebankError(f"cannot connect to the Dask scheduler at {address}: {first}") from None
    try:
        threads = client.nthreads()
        if not threads:
            raise FeaturebankError(
                f"the Dask scheduler at {address} has no workers: start some with `dask worker {address}`"
            )
        yield Cluster(client, address, len(threads), sum(threads.values()))
    finally:
        client.close()


@contextlib.contextmanager
def layer_tasks(cluster: Cluster | None, arrays: list):
    """Run the joblib ``Parallel`` calls inside on ``cluster`` (if any), with ``arrays`` (the layer's features,
    labels, groups) broadcast to every worker once. Yields what the tasks take in their place: the arrays
    themselves without a cluster, else their Dask futures (joblib passes a future through, and each worker gets
    the data it names). ``None`` stays ``None``."""
    if cluster is None:
        yield arrays
        return
    from joblib import parallel_config

    scattered = iter(cluster.client.scatter([a for a in arrays if a is not None], broadcast=True))
    futures = [None if a is None else next(scattered) for a in arrays]  # keyed by content: the labels keep theirs
    # the previous layer's futures are let go only now that this layer's are held: a key whose last future goes
    # (the labels', between two layers) is released by a message that can reach the scheduler after the next
    # scatter of the same key, which then forgets data its tasks were just given ("lost dependencies")
    cluster.held[:] = [f for f in futures if f is not None]
    with parallel_config(backend="dask", client=cluster.client):
        yield futures


__all__ = ["Cluster", "INSTALL", "layer_tasks", "on_cluster"]
