"""Several processes, one cache: which rank of how many this process is, and how the ranks of a job agree.

torchrun (and Slurm jobs that run torchrun on each node) set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
``LOCAL_WORLD_SIZE``. With ``WORLD_SIZE`` 1 or unset nothing here imports torch: a single-process run is exactly
what it was. With more ranks, a gloo process group carries the few small messages the ranks exchange (flags,
counts, the summary); the features themselves never travel between ranks, each rank writes its own parts of
the cache, which is why gloo serves GPU ranks too.

Every step that all ranks go through is a :meth:`Group.step`: whatever one rank raises inside it reaches all the
others at the end of the step, so no rank waits forever at a barrier for a rank that failed (a rank that dies
outright is torchrun's to handle: it stops the whole group).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

from embedder.kernel.errors import FeaturebankError, InvalidValue, first_line

TIMEOUT_ENV = "FEATUREBANK_DIST_TIMEOUT"  # seconds a rank waits for the others at one step (default: an hour)
DEFAULT_TIMEOUT_S = 3600


def _env_int(environ, name: str, default: int | None = None) -> int:
    value = environ.get(name)
    if value is None or value == "":
        if default is None:
            raise InvalidValue(f"{name} is not set, but WORLD_SIZE is: start the ranks with torchrun")
        return default
    try:
        return int(value)
    except ValueError:
        raise InvalidValue(f"{name}={value!r} is not a whole number (set by torchrun or your launcher?)") from None


@dataclass(frozen=True)
class Rank:
    """This process's place in a job: rank ``rank`` of ``world_size``, the ``local_rank``-th of
    ``local_world_size`` on its machine. The default is a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_env(cls, environ=None) -> Rank:
        environ = os.environ if environ is None else environ
        world = _env_int(environ, "WORLD_SIZE", 1)
        if world <= 1:
            return cls()
        rank, local = _env_int(environ, "RANK"), _env_int(environ, "LOCAL_RANK")
        local_world = _env_int(environ, "LOCAL_WORLD_SIZE", world)
        if not (0 <= rank < world and 0 <= local < local_world <= world):
            raise InvalidValue(
                f"inconsistent ranks: RANK={rank} LOCAL_RANK={local} LOCAL_WORLD_SIZE={local_world} WORLD_SIZE={world}"
            )
        return cls(rank, world, local, local_world)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def leader(self) -> bool:
        """Rank 0: holds the cache's lock, prepares the engine first, merges, prints."""
        return self.rank == 0

    def device(self, device: str) -> str:
        """A GPU without an index means this rank's own one, ``cuda:LOCAL_RANK``; anything else is kept."""
        if self.distributed and device == "cuda":
            return f"cuda:{self.local_rank}"
        return device

    def shard(self, items: list, batch_size: int) -> list:
        """This rank's share of ``items``: the batches ``rank``, ``rank + world_size``, ... of a single-process
        run over the same list. Disjoint, deterministic, balanced to a batch, and each batch is the one a single
        process would have made, so the features are those of a single-process run."""
        if not self.distributed:
            return list(items)
        starts = range(self.rank * batch_size, len(items), self.world_size * batch_size)
        return [item for start in starts for item in items[start : start + batch_size]]

    def cores(self, available: list[int]) -> list[int]:
        """This rank's share of the machine's cores (``available``), so that the ranks of one machine do not
        compete: an equal, disjoint slice each, or one core when there are more ranks than cores."""
        available = sorted(available)
        if self.local_world_size <= 1 or not available:
            return available
        if len(available) < self.local_world_size:
            return [available[self.local_rank % len(available)]]
        per = len(available) // self.local_world_size
        return available[self.local_rank * per : (self.local_rank + 1) * per]


class Solo:
    """A job of one process: every step simply runs. Imports nothing."""

    rank = Rank()
    distributed = False

    def __enter__(self) -> Solo:
        return self

    def __exit__(self, *exc) -> None:
        return None

    @contextmanager
    def step(self, what: str):
        yield

    def leader_first(self, what: str, fn):
        return fn()

    def gather(self, value) -> list:
        return [value]

    def broadcast(self, value):
        return value


class Group(Solo):
    """The ranks of one torchrun job, over a gloo process group (created on entry, destroyed on exit). On entry
    this process is also given its share of the machine's cores (and torch as many threads)."""

    distributed = True

    def __init__(self, rank: Rank, timeout_s: float | None = None):
        self.rank = rank
        self.timeout_s = timeout_s or float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S)
        self._affinity: set[int] | None = None
        self._threads: int | None = None

    def __enter__(self) -> Group:
        self._share_cores()
        import datetime

        import torch.distributed as dist

        self._dist, self._own = dist, not dist.is_initialized()
        timeout = datetime.timedelta(seconds=self.timeout_s)
        try:
            if self._own:
                dist.init_process_group("gloo", rank=self.rank.rank, world_size=self.rank.world_size, timeout=timeout)
                self._group = None  # the default group
            else:  # called from a script that has its own process group (perhaps NCCL): a gloo one beside it
                self._group = dist.new_group(backend="gloo", timeout=timeout)
        except (RuntimeError, ValueError) as exc:
            self._restore_cores()
            raise FeaturebankError(
                f"rank {self.rank.rank} could not join the other {self.rank.world_size - 1} "
                f"({type(exc).__name__}: {first_line(exc)})"
            ) from None
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._dist.destroy_process_group(self._group)
        finally:
            self._restore_cores()

    def _share_cores(self) -> None:
        if not hasattr(os, "sched_getaffinity"):
            return
        self._affinity = os.sched_getaffinity(0)
        mine = self.rank.cores(list(self._affinity))
        os.sched_setaffinity(0, mine)
        import torch  # torchrun sets OMP_NUM_THREADS=1 for its workers: each rank uses its share instead

        self._threads = torch.get_num_threads()
        torch.set_num_threads(len(mine))

    def _restore_cores(self) -> None:
        if self._affinity is not None:
            os.sched_setaffinity(0, self._affinity)
            import torch

            torch.set_num_threads(self._threads)
            self._affinity = None

    @contextmanager
    def step(self, what: str):
        """Run the block on every rank, then agree: if any rank raised, every rank raises (the one that failed
        its own exception, the others a one-line error that names it)."""
        error = None
        try:
            yield
        except Exception as exc:  # noqa: BLE001 (the other ranks must hear of any failure)
            error = exc
        message = (
            None
            if error is None
            else (str(error) if isinstance(error, FeaturebankError) else f"{type(error).__name__}: {error}")
        )
        try:
            reports = self.gather(message)
        except RuntimeError:  # the group is broken (a rank died, a timeout): this rank's own error comes first
            if error is not None:
                raise error from None
            raise
        if error is not None:
            raise error
        failed = [(r, m) for r, m in enumerate(reports) if m is not None]
        if failed:
            r, m = failed[0]
            raise FeaturebankError(f"rank {r} failed while {what}: {m}")

    def leader_first(self, what: str, fn):
        """``fn()`` on rank 0, then, once it is done, on every other rank (what rank 0 prepares on disk, the
        others find there); returns this rank's result."""
        result = None
        with self.step(what):
            if self.rank.leader:
                result = fn()
        with self.step(what):
            if not self.rank.leader:
                result = fn()
        return result

    def gather(self, value) -> list:
        """Every rank's ``value``, in rank order, on every rank."""
        out = [None] * self.rank.world_size
        self._dist.all_gather_object(out, value, group=self._group)
        return out

    def broadcast(self, value):
        """Rank 0's ``value`` on every rank."""
        box = [value]
        self._dist.broadcast_object_list(box, src=0, group=self._group)
        return box[0]


def join(rank: Rank | None = None) -> Solo:
    """The job this process belongs to (from the environment unless given): ``Solo`` or a ``Group`` to enter."""
    rank = Rank.from_env() if rank is None else rank
    return Group(rank) if rank.distributed else Solo()
