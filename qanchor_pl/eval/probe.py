"""The linear probe every row of a report goes through: standardised L2 logistic regression.

With ``c="cv"`` the regularisation is chosen per row and scenario by 3-fold stratified
cross-validation (ROC AUC) on the train split only. Two exact shortcuts keep that affordable on
a 2-core machine for wide baselines (thousands of columns), without changing the fitted model:

- the solver is Newton-CG, warm-started along the C path by scikit-learn: ~10 Newton steps per C
  where L-BFGS needs hundreds at large C (4x faster on the demo's mean event vectors);
- a matrix wider than it is tall is first mapped onto the row span of the scaled train matrix
  (dense: thin SVD; sparse: the Gram matrix, never densifying the wide matrix). An L2-penalised linear model's weights lie in that span (the stationarity
  condition w = -C X^T (p - y)), for every fold too (a fold's rows are a subset), and a rotation
  keeps the penalty ||w||^2, so the fit and every fold's fit are the same problem in fewer
  columns (the time-window reference: 6,543 -> at most the number of train users).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import sparse

log = logging.getLogger(__name__)

#: The regularisation grid (inverse strength C), chosen per row and scenario on train. It reaches
#: far down because wide standardised baselines (the time-window reference) want strong penalties.
PROBE_CS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
#: Newton-CG iterations per C (each converges in ~10-20 on the demo's features).
PROBE_MAX_ITER = 500
#: Solver tolerance (scikit-learn's default; 1e-6 changed no demo AUC in the 4th decimal and
#: cost 1.5x the time).
PROBE_TOL = 1e-4
#: Singular values below this fraction of the largest are numerically zero in the row-span rotation.
RANK_TOL = 1e-10
#: The same for squared singular values from the Gram matrix of a sparse matrix.
GRAM_TOL = 1e-12
#: A sparse matrix's columns stored for more than this fraction of rows are multiplied as dense.
DENSE_COLUMN_FRACTION = 0.1


class SparseCross:
    """``A @ X.T`` as a dense array for a fixed wide sparse ``X``, fast when some columns are dense.

    A baseline that puts dense blocks (mean event vectors) beside a long-tailed vocabulary's
    counts is "sparse" with millions of stored values in a few thousand full columns; a sparse
    product over those runs at a small fraction of BLAS speed (100 s against a few seconds for
    the dynamic world's time-window reference). Columns stored for more than
    :data:`DENSE_COLUMN_FRACTION` of the rows are multiplied as dense arrays, the rest sparse."""

    def __init__(self, x: Any) -> None:
        x = sparse.csc_matrix(x)
        fill = np.diff(x.indptr) / max(x.shape[0], 1)
        self.dense_cols = np.flatnonzero(fill > DENSE_COLUMN_FRACTION)
        self.sparse_cols = np.flatnonzero(fill <= DENSE_COLUMN_FRACTION)
        self.x_dense = x[:, self.dense_cols].toarray().astype(np.float64)  # [n, dense columns]
        self.x_sparse_t = x[:, self.sparse_cols].T.tocsr()  # [sparse columns, n]

    def __call__(self, a: Any) -> np.ndarray:
        a = sparse.csc_matrix(a)
        out = a[:, self.dense_cols].toarray().astype(np.float64) @ self.x_dense.T
        out += np.asarray((a[:, self.sparse_cols].tocsr() @ self.x_sparse_t).todense(), dtype=np.float64)
        return out


def row_span_rotation(x_train: Any) -> Callable[[Any], np.ndarray] | None:
    """A map onto orthonormal coordinates of the row span of ``x_train`` when that saves columns
    (rank < columns), else None. Dense: thin SVD. Sparse: eigendecomposition of the Gram matrix
    X X^T (n x n), so the wide sparse matrix is never densified; the map of a matrix A is then
    A X^T U diag(s)^-1, which equals A V for the right singular vectors V."""
    n, d = x_train.shape
    if d <= n:
        return None
    if sparse.issparse(x_train):
        cross = SparseCross(x_train)
        gram = cross(x_train)
        eigvals, u = np.linalg.eigh(gram)
        # Eigenvalues are squared singular values, known to ~1e-16 of the largest: directions
        # below GRAM_TOL of it carry weights of at most ~1e-6 of the largest singular value.
        keep = eigvals > GRAM_TOL * max(float(eigvals.max()), 0.0)
        coef = u[:, keep] / np.sqrt(eigvals[keep])  # [n, R]: A V = (A X^T) U diag(s)^-1
        # Never the [D, R] basis itself: with a long-tailed vocabulary D is 10^5 and more.
        return lambda a: cross(a) @ coef
    _, s, vt = np.linalg.svd(x_train, full_matrices=False)
    rank = int((s > RANK_TOL * s[0]).sum()) if s.size and s[0] > 0 else 0
    basis = vt[: max(rank, 1)].T
    return lambda a: a @ basis


def prepare(x_train: Any) -> tuple[Any, Callable[[Any], Any]]:
    """The probe's input map, fitted on the train rows: standardisation, then the row-span
    rotation when it saves columns. Returns (the mapped train rows, the map for other rows).
    Scenarios that share their train users share it (:func:`probe`'s ``prepared``): on a wide
    baseline the rotation is most of a scenario's cost."""
    from sklearn.preprocessing import StandardScaler

    # Sparse inputs are scaled without centring (which would densify them); with the probe's
    # unpenalised intercept that is the same fit.
    scaler = StandardScaler(with_mean=not sparse.issparse(x_train)).fit(x_train)
    scaled = scaler.transform(x_train)
    rotate = row_span_rotation(scaled)
    if rotate is None:
        return scaled, scaler.transform
    return rotate(scaled), lambda a: rotate(scaler.transform(a))


def probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    seed: int = 0,
    c: float | str = 1.0,
    prepared: tuple[Any, Callable[[Any], Any]] | None = None,
) -> tuple[np.ndarray, float]:
    """Positive-class scores of a standardised logistic regression fitted on the train split, and its C.

    ``c="cv"``: C chosen from ``PROBE_CS`` by 3-fold stratified cross-validation (ROC AUC) on the
    train split only, for every row alike (a fixed C = 1 under-regularises wide features, i.e. the
    baselines); with fewer than 3 users of a class in train it falls back to C = 1 (logged). A
    number fixes C. ``prepared``: :func:`prepare` of these very train rows, computed before."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    if len(np.unique(y_train)) < 2:
        raise ValueError("the train split has a single class; the probe cannot be fitted")
    if c == "cv" and np.bincount(y_train.astype(np.int64)).min() < 3:
        log.warning("probe: fewer than 3 users of a class in train; C = 1 without cross-validation")
        c = 1.0
    x_train, transform = prepared if prepared is not None else prepare(x_train)
    x_test = transform(x_test)
    if c == "cv":
        folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
        clf = LogisticRegressionCV(
            Cs=list(PROBE_CS), cv=folds, scoring="roc_auc", solver="newton-cg",
            max_iter=PROBE_MAX_ITER, tol=PROBE_TOL, random_state=seed,
        )  # fmt: skip
        with warnings.catch_warnings():  # scikit-learn 1.8+ announces attribute changes we do not use
            warnings.simplefilter("ignore", FutureWarning)
            clf.fit(x_train, y_train)
        chosen = float(clf.C_[0])
    else:
        chosen = float(c)
        clf = LogisticRegression(
            C=chosen, solver="newton-cg", max_iter=PROBE_MAX_ITER, tol=PROBE_TOL, random_state=seed
        )
        clf.fit(x_train, y_train)
    return clf.predict_proba(x_test)[:, 1], chosen
