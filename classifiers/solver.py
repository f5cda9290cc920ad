"""The tuned probe's sweep of ``C``: logistic regressions on several row sets at once, each along a path of ``C``.

Each problem is scikit-learn's ``LogisticRegression`` objective (``lbfgs``): the mean log-loss over its rows plus
``||W||² / (2 C n)``, the intercept not penalized; multinomial with one coefficient row per class, or, with two
classes, scikit-learn's binary form (one row, for the second class). The problems are the inner folds: each fits
the union of some row blocks (``member``), so that a block's rows are multiplied once per iteration by the
coefficients of every problem that fits them, side by side (one wider product, float32, instead of one narrow
product per fold), and never by those of a problem that holds them out.

Every problem runs along ``Cs`` from the strongest regularization, as a continuation: once its gradient is within
``tol`` (scikit-learn's test: the largest entry) at one value, it goes on to the next from the same point, and keeps
its L-BFGS curvature pairs. Only the penalty changes between two values, and its curvature is known exactly, so
each kept pair ``(s, y)`` is corrected (``y += Δλ s`` on the coefficients) rather than thrown away: the next value
starts with both a close point and a good model of the Hessian, and needs a few iterations where a cold fit needs
tens. The caller scores each problem's solution as it arrives (``arrived``) and may cap how far along the path the
problems go (``limit``), stopping them once the best value is behind.

L-BFGS with ``MEMORY`` (30) pairs and Armijo backtracking from the unit step, its state in float64; only the products with the
rows are in the rows' dtype. numpy, no scikit-learn; with ``device`` (``"cuda"``), the rows a fit reads are copied
to that torch device when it starts and the products and pointwise losses run there (the same float32 arithmetic; the L-BFGS state,
a few vectors per problem, stays in numpy): ``device_for`` says when a fit is worth it. torch is imported only then.

The rows need not be a copy of the problems' own: ``weights`` says which rows of a block each problem fits (the
others weigh 0: a span of a whole layer serves every fold cut from it), and ``standardize`` fits the problems on
``(X - mean) / scale`` while reading raw rows, through the identity ``X_s W = X (W / scale) - (mean / scale) W`` and
the gradient's ``X_sᵀ R = (Xᵀ R) / scale - (mean / scale) ⊗ Σ R`` (the sums in float64): the coefficients are the
standardized problem's, and no standardized copy of the rows is made.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from embedder.kernel.errors import InvalidValue

MEMORY = 30  # L-BFGS pairs kept per problem: 10 (scipy's) took 1.6 times the passes on flowers
ARMIJO = 1e-4  # sufficient decrease
MAX_HALVINGS = 30  # backtracking steps before a problem counts as converged (no decrease left at float precision)
ROW_BLOCK = 32_768  # rows per product: the rows x width intermediates stay bounded at any size
# From how many row x dimension entries a fit runs on a CUDA device when there is one (16,000 rows of 1,280 dims):
# an estimate, not yet measured on a GPU (benchmarks/gpu.py, section probe): below it the copy of the rows and the
# round trip of every iteration are taken to cost more than the products save
DEVICE_FROM = 20_000_000
DEVICE_SHARE = 0.5  # the rows may take at most this share of the device's free memory
_ON_DEVICE = threading.Lock()  # fits side by side (parallel.side_by_side) take the device in turn
SOLVER_DEVICE = "FEATUREBANK_SOLVER_DEVICE"  # "numpy": never torch; a torch device ("cuda:1", "cpu"): that one always


def device_for(rows: int, dims: int, nbytes: float) -> str | None:
    """The torch device the sweep of ``rows`` x ``dims`` (``nbytes`` of rows) runs on, or None for numpy: a CUDA
    device when torch sees one, the rows are ``DEVICE_FROM`` entries or more and fit in ``DEVICE_SHARE`` of its free
    memory. ``FEATUREBANK_SOLVER_DEVICE`` overrides: ``numpy``, never torch; a torch device name (``cuda:1``, or
    ``cpu``: torch on the CPU, what the tests compare with numpy), that device at any size. torch is not imported
    on a machine without an NVIDIA driver (no ``/dev/nvidiactl``) unless a script imported it already."""
    wanted = os.environ.get(SOLVER_DEVICE, "").strip()
    if wanted:
        return None if wanted.lower() == "numpy" else _named_device(wanted)
    if rows * dims < DEVICE_FROM or ("torch" not in sys.modules and not os.path.exists("/dev/nvidiactl")):
        return None
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        free, _ = torch.cuda.mem_get_info()  # makes a CUDA context: can fail on a busy or exclusive GPU
        free += torch.cuda.memory_reserved() - torch.cuda.memory_allocated()  # torch's own cache is free to it
    except (ImportError, RuntimeError):
        return None
    return "cuda" if nbytes <= DEVICE_SHARE * free else None


def _named_device(name: str) -> str:
    """``FEATUREBANK_SOLVER_DEVICE``'s torch device, checked: a one-line error that names the variable."""
    try:
        import torch

        device = torch.device(name)
    except ImportError:
        raise InvalidValue(f"{SOLVER_DEVICE}={name}: torch is not installed; give numpy") from None
    except RuntimeError:
        raise InvalidValue(f"{SOLVER_DEVICE}={name}: give numpy or a torch device (cuda, cuda:1, cpu)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidValue(f"{SOLVER_DEVICE}={name}: torch sees no CUDA device here; give numpy or cpu")
    return name


@dataclass
class Path:
    """What ``fit_path`` returns. Per problem and value of C (problems x Cs): ``coef`` (x outputs x d, NaN where
    the problem never reached that value), ``intercept``, ``n_iter``. Per problem: ``reached`` (the last value it
    converged at, -1 if none)."""

    coef: np.ndarray
    intercept: np.ndarray
    n_iter: np.ndarray
    reached: np.ndarray


def outputs(n_classes: int) -> int:
    """Coefficient rows: one for a binary problem (scikit-learn's form), else one per class."""
    return 1 if n_classes == 2 else n_classes


def pointwise(Z: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores ``Z`` (rows x problems x outputs) → each row's log-loss under each problem (rows x problems), and the
    derivative of that loss in the scores (written over ``Z``)."""
    if n_classes == 2:
        z = Z[:, :, 0]
        target = (y == 1).astype(Z.dtype)[:, None]
        row_loss = np.logaddexp(0, z) - target * z
        small = np.exp(-np.abs(Z))  # the sigmoid without overflow: e^-|z| is at most 1
        np.copyto(Z, np.where(Z >= 0, 1.0 / (1.0 + small), small / (1.0 + small)).astype(Z.dtype, copy=False))
        Z[:, :, 0] -= target
        return row_loss, Z
    Z -= Z.max(axis=2, keepdims=True)
    np.exp(Z, out=Z)
    Z /= Z.sum(axis=2, keepdims=True)  # the softmax
    rows = np.arange(len(y))
    row_loss = -np.log(np.maximum(Z[rows, :, y], np.finfo(Z.dtype).tiny))  # rows x problems
    Z[rows, :, y] -= 1
    return row_loss, Z


def _pointwise_torch(Z, y, n_classes: int):
    """``pointwise`` on torch tensors (on the rows' device): the same losses and derivatives."""
    import torch

    if n_classes == 2:
        z = Z[:, :, 0]
        target = (y == 1).to(Z.dtype)[:, None]
        row_loss = torch.nn.functional.softplus(z) - target * z
        R = torch.sigmoid(Z)
        R[:, :, 0] -= target
        return row_loss, R
    R = torch.softmax(Z, dim=2)
    rows = torch.arange(len(y), device=Z.device)
    row_loss = -torch.log(torch.clamp(R[rows, :, y], min=torch.finfo(Z.dtype).tiny))
    R[rows, :, y] -= 1
    return row_loss, R


class _Products:
    """The one part of a fit that reads the rows: for a block's rows, a chunk at a time, the summed loss and the
    gradient's two products under the problems' coefficients ``W`` (d x problems·outputs) and ``bias``. In numpy on
    the rows as given, or, with a ``device``, in torch on copies of them made there for this fit."""

    def __init__(self, blocks, labels, weights, n_classes: int, device: str | None, used: np.ndarray):
        """``used[b]``: some problem fits block ``b`` (only those are copied to a device)."""
        self.n_classes = n_classes
        self.device = device
        if device is None:
            self.blocks, self.labels, self.weights = blocks, labels, weights
            return
        import torch

        self.torch = torch

        def there(array, dtype=None):
            return torch.as_tensor(np.ascontiguousarray(array, dtype=dtype)).to(device)

        self.blocks = [there(b) if u else None for b, u in zip(blocks, used)]
        self.labels = [there(y, np.int64) if u else None for y, u in zip(labels, used)]
        self.weights = None if weights is None else [there(w) if u else None for w, u in zip(weights, used)]

    def __call__(self, b: int, W64: np.ndarray, bias64: np.ndarray, scale64: np.ndarray, cols: np.ndarray):
        """Block ``b`` under problems ``cols``: (loss per problem, Xᵀ R as problems·outputs x d, Σ R per output),
        all float64 numpy; ``scale64``: each problem's 1 / its row count."""
        K = W64.shape[1] // len(cols)
        if self.device is not None:
            return self._on_device(b, W64, bias64, scale64, cols, K)
        X = self.blocks[b]
        W = np.ascontiguousarray(W64, dtype=X.dtype)
        bias = bias64.astype(X.dtype)
        scale = scale64.astype(X.dtype)
        weight = None if self.weights is None else np.asarray(self.weights[b])[:, cols].astype(X.dtype)
        f = np.zeros(len(cols))
        g = np.zeros((len(cols) * K, X.shape[1]))
        g0 = np.zeros(len(cols) * K)
        for s0 in range(0, len(self.labels[b]), ROW_BLOCK):
            rows = slice(s0, s0 + ROW_BLOCK)
            Xr = X[rows]
            Z = (Xr @ W).reshape(-1, len(cols), K)
            Z += bias
            row_loss, R = pointwise(Z, self.labels[b][rows], self.n_classes)
            if weight is not None:  # a row outside a problem: no loss, no gradient
                row_loss *= weight[rows]
                R *= weight[rows][:, :, None]
            f += row_loss.sum(axis=0, dtype=np.float64) * scale
            R *= scale[None, :, None]
            R2 = R.reshape(-1, len(cols) * K)
            g += (Xr.T @ R2).T
            g0 += R2.sum(axis=0, dtype=np.float64)
        return f, g, g0

    def _on_device(self, b, W64, bias64, scale64, cols, K):
        torch = self.torch
        X = self.blocks[b]
        W = torch.as_tensor(np.ascontiguousarray(W64), dtype=X.dtype, device=X.device)
        bias = torch.as_tensor(bias64, dtype=X.dtype, device=X.device)
        scale = torch.as_tensor(scale64, dtype=X.dtype, device=X.device)
        weight = None if self.weights is None else self.weights[b][:, torch.as_tensor(cols, device=X.device)]
        f = torch.zeros(len(cols), dtype=torch.float64, device=X.device)
        g = torch.zeros((len(cols) * K, X.shape[1]), dtype=torch.float64, device=X.device)
        g0 = torch.zeros(len(cols) * K, dtype=torch.float64, device=X.device)
        for s0 in range(0, len(self.labels[b]), ROW_BLOCK):
            Xr = X[s0 : s0 + ROW_BLOCK]
            Z = (Xr @ W).reshape(-1, len(cols), K) + bias
            row_loss, R = _pointwise_torch(Z, self.labels[b][s0 : s0 + ROW_BLOCK], self.n_classes)
            if weight is not None:
                w = weight[s0 : s0 + ROW_BLOCK].to(X.dtype)
                row_loss = row_loss * w
                R = R * w[:, :, None]
            f += row_loss.sum(dim=0, dtype=torch.float64) * scale.double()
            R2 = (R * scale[None, :, None]).reshape(-1, len(cols) * K)
            g += (Xr.T @ R2).T.double()
            g0 += R2.sum(dim=0, dtype=torch.float64)
        return f.cpu().numpy(), g.cpu().numpy(), g0.cpu().numpy()


def probabilities(X: np.ndarray, coef: np.ndarray, intercept: np.ndarray, n_classes: int) -> np.ndarray:
    """Class probabilities of the rows under one solution (``coef``: outputs x d), float64."""
    z = (X @ np.asarray(coef, dtype=X.dtype).T).astype(np.float64) + intercept
    if n_classes == 2:
        p = 1.0 / (1.0 + np.exp(-z[:, 0]))
        return np.stack([1 - p, p], axis=1)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    return z / z.sum(axis=1, keepdims=True)


def fit_path(*args, device: str | None = None, **kwargs) -> Path:
    """``_fit_path`` (its arguments and what it returns), with ``device`` (a torch device, ``device_for``'s choice)
    or in numpy (None). On a CUDA device the products are in true float32 (TF32 off: its 10-bit products would be
    the gradient's noise; ``tf32_off``, the extraction's own guard); when the rows cannot be copied there (out of
    memory, a busy GPU), the fit runs in numpy and says so in a warning."""
    if device is None:
        return _fit_path(*args, **kwargs)
    import torch

    from embedder.backbones.features import tf32_off

    try:
        with _ON_DEVICE, tf32_off(torch.device(device)):  # one fit there at a time: TF32's flags are global
            return _fit_path(*args, device=device, **kwargs)
    except _CopyFailed as failed:
        warnings.warn(
            f"the probe's solver runs on the CPU: its rows could not be copied to {device} ({failed})", stacklevel=2
        )
        return _fit_path(*args, **kwargs)


class _CopyFailed(Exception):
    """The rows could not be copied to the device (nothing was fitted yet)."""


def _fit_path(
    blocks: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    n_classes: int,
    Cs: Sequence[float],
    member: np.ndarray | None = None,
    tol: float = 1e-4,
    relative: float | None = None,
    max_iter: int = 2000,
    arrived: Callable[[int, int, np.ndarray, np.ndarray], None] | None = None,
    limit: Callable[[], int] | None = None,
    start: tuple[np.ndarray, np.ndarray] | None = None,
    weights: Sequence[np.ndarray] | None = None,
    standardize: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    device: str | None = None,
) -> Path:
    """Fit problems along ``Cs`` (increasing: strong regularization first). ``blocks[b]`` are rows (float32 or
    float64, used as given, never copied), ``labels[b]`` their class indices (0 … n_classes - 1); ``member[b, p]``:
    problem ``p`` fits block ``b`` (None: every problem every block; one problem, or one per column of ``weights``). ``arrived(p, j, coef, intercept)`` is called
    when problem ``p`` converges at ``Cs[j]``; ``limit()`` (after it, and every iteration) is the last index any
    problem may go on to (the others stop where they are). ``start``: coef and intercept every problem starts from
    (else zero), with no curvature pairs: another fit's, corrected for the penalty, cost the tuned probe's refit
    iterations (42 against 32 on flowers, 23 against 7 on hymenoptera).
    A problem stops at a value when the largest entry of its gradient is at most ``tol``, and, with ``relative``,
    at most that share of what it was when the problem began that value. ``max_iter`` caps each problem's
    iterations at each value. ``weights[b]`` (rows x problems, 0 or 1): which of block ``b``'s rows each problem
    fits (a row's label is then read only where its weight is 1); ``standardize`` (mean, scale: one each per
    column): the problems are on the standardized rows, the blocks given raw. ``device``: a torch device the
    rows are copied to and multiplied on (``device_for``); None: numpy on the rows as given."""
    grid = np.asarray(Cs, dtype=np.float64)
    if member is None:  # every problem fits every block: one, or as many as ``weights`` has columns
        member = np.ones((len(blocks), 1 if weights is None else np.shape(weights[0])[1]), dtype=bool)
    member = np.asarray(member, dtype=bool)
    n_blocks, P = member.shape
    d = blocks[0].shape[1]
    K = outputs(n_classes)
    KD = K * d  # coefficients first, then the K intercepts
    D = KD + K
    if weights is None:
        counts = np.array([sum(len(labels[b]) for b in range(n_blocks) if member[b, p]) for p in range(P)], float)
    else:
        per_block = np.array([np.asarray(w, dtype=np.float64).sum(axis=0) for w in weights])  # blocks x problems
        counts = (per_block * member).sum(axis=0)
    if standardize is not None:
        inverse = 1.0 / np.asarray(standardize[1], dtype=np.float64)  # per column
        shift = np.asarray(standardize[0], dtype=np.float64) * inverse
    j = np.zeros(P, dtype=int)
    lam = 1.0 / (grid[j] * counts)
    x = np.zeros((P, D))
    S, Y, rho = np.zeros((MEMORY, P, D)), np.zeros((MEMORY, P, D)), np.zeros((MEMORY, P))
    gamma = np.ones(P)
    first = np.ones(P, dtype=bool)
    if start is not None:
        x[:, :KD] = np.asarray(start[0], dtype=np.float64).reshape(1, KD)
        x[:, KD:] = np.asarray(start[1], dtype=np.float64).reshape(1, K)
        if K > 2:
            x[:, KD:] -= x[:, KD:].mean(axis=1, keepdims=True)
    slot = 0  # the next pair's place in the circular memory, shared by every problem
    stored = 0  # pairs written so far (at most MEMORY)
    try:
        products = _Products(blocks, labels, weights, n_classes, device, used=np.asarray(member.any(axis=1)))
    except RuntimeError as exc:  # torch.cuda.OutOfMemoryError and a failing device are RuntimeErrors
        raise _CopyFailed(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None

    def evaluate(xs: np.ndarray, which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Objective and gradient of the problems ``which`` at the points ``xs`` (one row each)."""
        f = np.zeros(len(which))
        g = np.zeros((len(which), D))
        for b in range(n_blocks):
            cols = np.flatnonzero(member[b, which])
            if not len(cols):
                continue
            W64 = xs[cols, :KD].reshape(len(cols) * K, d).T
            bias64 = xs[cols, KD:]
            if standardize is not None:  # X_s W + b = X (W / scale) + (b - (mean / scale) W)
                bias64 = bias64 - (shift @ W64).reshape(len(cols), K)
                W64 = W64 * inverse[:, None]
            loss, gX, g1 = products(b, W64, bias64, 1.0 / counts[which[cols]], which[cols])
            f[cols] += loss
            g[cols, :KD] += gX.reshape(len(cols), KD)
            g[cols, KD:] += g1.reshape(len(cols), K)
        if standardize is not None:  # X_sᵀ R = (Xᵀ R) / scale - (mean / scale) ⊗ Σ R, per output
            raw = g[:, :KD].reshape(len(which), K, d) * inverse - g[:, KD:, None] * shift
            g[:, :KD] = raw.reshape(len(which), KD)
        if K > 2:  # adding one number to every class's intercept changes nothing: stay where they sum to zero, as
            g[:, KD:] -= g[:, KD:].mean(axis=1, keepdims=True)  # scikit-learn's do (float32 rounding drifts else)
        coef = xs[:, :KD]
        f += 0.5 * lam[which] * np.einsum("pd,pd->p", coef, coef)
        g[:, :KD] += lam[which][:, None] * coef
        return f, g

    path = Path(
        coef=np.full((P, len(grid), K, d), np.nan),
        intercept=np.full((P, len(grid), K), np.nan),
        n_iter=np.zeros((P, len(grid)), dtype=int),
        reached=np.full(P, -1),
    )
    done = np.zeros(P, dtype=bool)
    f, g = evaluate(x, np.arange(P))

    def settle(p: int) -> None:
        """Problem ``p`` converged (or ran out of iterations) at ``grid[j[p]]``: recorded, then on to the next value
        when allowed, from the same point with its pairs corrected for the new penalty; else done."""
        while True:
            path.coef[p, j[p]] = x[p, :KD].reshape(K, d)
            path.intercept[p, j[p]] = x[p, KD:]
            path.reached[p] = j[p]
            if arrived is not None:
                arrived(p, int(j[p]), path.coef[p, j[p]], path.intercept[p, j[p]])
            last = len(grid) - 1 if limit is None else min(limit(), len(grid) - 1)
            if j[p] + 1 > last:
                done[p] = True
                return
            j[p] += 1
            delta = 1.0 / (grid[j[p]] * counts[p]) - lam[p]
            coef = x[p, :KD]
            f[p] += 0.5 * delta * coef @ coef
            g[p, :KD] += delta * coef
            w = slice(0, stored)  # the slots written so far (the rest are zero, rho 0)
            Y[w, p, :KD] += delta * S[w, p, :KD]
            sy = np.einsum("md,md->m", S[w, p], Y[w, p])
            rho[w, p] = np.where((rho[w, p] > 0) & (sy > 0), 1.0 / np.where(sy > 0, sy, 1.0), 0.0)
            newest = (slot - 1) % MEMORY
            if rho[newest, p] > 0:
                gamma[p] = 1.0 / (rho[newest, p] * Y[newest, p] @ Y[newest, p])
            lam[p] += delta
            bound[p] = target(np.abs(g[p]).max())
            if np.abs(g[p]).max() > bound[p]:
                return

    def target(start_gradient: float) -> float:
        """The gradient a problem stops at: ``tol``, and with ``relative`` also that share of its gradient when it
        began this value of C (a weakly regularized value starts within ``tol`` already, yet far from its optimum)."""
        return tol if relative is None else min(tol, relative * start_gradient)

    bound = np.array([target(np.abs(g[p]).max()) for p in range(P)])
    for p in range(P):
        if np.abs(g[p]).max() <= bound[p]:
            settle(p)
    while True:
        last = len(grid) - 1 if limit is None else limit()
        done |= j > last
        active = np.flatnonzero(~done)
        if not len(active):
            break
        # The two-loop recursion, for the active problems together, over the pairs stored so far (a slot never
        # written, rho 0, would contribute nothing: on few rows most of a fit's iterations have fewer than MEMORY).
        q = -g[active]
        order = (slot - 1 - np.arange(stored)) % MEMORY  # the slots, newest first
        if len(active) == P:
            Sa, Ya, ra = S, Y, rho
        else:  # one gather of the stored pairs per iteration, not one per pair
            Sa, Ya, ra = S[np.ix_(order, active)], Y[np.ix_(order, active)], rho[np.ix_(order, active)]
            order = np.arange(stored)
        alpha = np.zeros((stored, len(active)))
        for i, m in enumerate(order):
            alpha[i] = ra[m] * np.einsum("pd,pd->p", Sa[m], q)
            q -= alpha[i][:, None] * Ya[m]
        q *= gamma[active][:, None]
        for i in range(stored - 1, -1, -1):
            m = order[i]
            beta = ra[m] * np.einsum("pd,pd->p", Ya[m], q)
            q += (alpha[i] - beta)[:, None] * Sa[m]
        slope = np.einsum("pd,pd->p", g[active], q)
        bad = slope >= 0  # not a descent direction (float noise): the gradient instead
        if bad.any():
            q[bad] = -g[active][bad]
            slope[bad] = -np.einsum("pd,pd->p", q[bad], q[bad])
        step = np.where(first[active], np.minimum(1.0, 1.0 / np.maximum(np.linalg.norm(q, axis=1), 1e-300)), 1.0)
        # Armijo backtracking, each problem its own step; only the problems still failing are evaluated again.
        new_f = np.empty(len(active))
        new_g = np.empty((len(active), D))
        pending = np.arange(len(active))
        for _ in range(MAX_HALVINGS):
            tf, tg = evaluate(x[active[pending]] + step[pending][:, None] * q[pending], active[pending])
            ok = tf <= f[active[pending]] + ARMIJO * step[pending] * slope[pending]
            new_f[pending[ok]], new_g[pending[ok]] = tf[ok], tg[ok]
            pending = pending[~ok]
            if not len(pending):
                break
            step[pending] *= 0.5
        stuck = np.zeros(len(active), dtype=bool)
        stuck[pending] = True  # no decrease left at float precision: as converged as it can be
        moved = np.flatnonzero(~stuck)
        pm = active[moved]
        s = step[moved][:, None] * q[moved]
        y = new_g[moved] - g[pm]
        sy = np.einsum("pd,pd->p", s, y)
        yy = np.einsum("pd,pd->p", y, y)
        good = sy > 1e-10 * yy
        S[slot, pm], Y[slot, pm] = s, y
        rho[slot, pm] = np.where(good, 1.0 / np.where(good, sy, 1.0), 0.0)
        rho[slot, active[stuck]] = 0.0
        gamma[pm[good]] = sy[good] / yy[good]
        slot = (slot + 1) % MEMORY
        stored = min(stored + 1, MEMORY)
        x[pm] += s
        f[pm], g[pm] = new_f[moved], new_g[moved]
        first[active] = False
        path.n_iter[active, j[active]] += 1
        for i, p in enumerate(active.tolist()):
            if stuck[i] or np.abs(g[p]).max() <= bound[p] or path.n_iter[p, j[p]] >= max_iter:
                settle(p)
    return path


__all__ = ["DEVICE_FROM", "Path", "device_for", "fit_path", "outputs", "pointwise", "probabilities"]
