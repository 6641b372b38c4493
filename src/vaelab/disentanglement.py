"""Disentanglement scores of codes against known discrete factors, as disentanglement_lib computes them: MIG (Chen
et al. 2018) and DCI disentanglement, completeness and informativeness (Eastwood & Williams 2018). Inputs are
numpy arrays: codes (N, D) float (posterior means) and factors (N, K) integer levels."""
from __future__ import annotations

import numpy as np
from scipy.stats import t as student_t
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.metrics import mutual_info_score


def discretize(codes: np.ndarray, bins: int = 20) -> np.ndarray:
    """Each code dimension cut into `bins` equal-width bins over its own range: (N, D) int."""
    out = np.empty(codes.shape, dtype=np.int64)
    for j in range(codes.shape[1]):
        edges = np.histogram_bin_edges(codes[:, j], bins)
        out[:, j] = np.digitize(codes[:, j], edges[1:-1])
    return out


def mutual_information(codes_discrete: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """I(code_j; factor_k) in nats for every pair: (D, K)."""
    return np.array([[mutual_info_score(factors[:, k], codes_discrete[:, j]) for k in range(factors.shape[1])]
                     for j in range(codes_discrete.shape[1])])


def entropy(factors: np.ndarray) -> np.ndarray:
    """H(factor_k) in nats of each column of discrete factors: (K,)."""
    return np.array([mutual_info_score(factors[:, k], factors[:, k]) for k in range(factors.shape[1])])


def mig(codes: np.ndarray, factors: np.ndarray, bins: int = 20) -> dict[str, float | list[float]]:
    """Mutual information gap: per factor, the MI of its most informative code minus that of the runner-up, over
    the factor's entropy; `mig` is their mean (0 to 1), `mig_per_factor` the K values."""
    if codes.shape[1] < 2:
        raise ValueError(f"MIG needs at least 2 code dimensions, got {codes.shape[1]}")
    mi = mutual_information(discretize(codes, bins), factors)  # (D, K)
    top = np.sort(mi, axis=0)[::-1]  # (D, K), descending per factor
    gaps = (top[0] - top[1]) / entropy(factors)
    return {"mig": float(gaps.mean()), "mig_per_factor": [float(g) for g in gaps]}


def importance_matrix(codes_train: np.ndarray, factors_train: np.ndarray, codes_test: np.ndarray,
                      factors_test: np.ndarray, seed: int = 0, trees: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Per factor, gradient-boosted trees (`trees` rounds of depth 3, scikit-learn's default) predicting its level
    from the codes: the codes' feature importances R (D, K) and each factor's test accuracy (K,)."""
    d, k = codes_train.shape[1], factors_train.shape[1]
    r, acc = np.zeros((d, k)), np.zeros(k)
    for j in range(k):
        model = GradientBoostingClassifier(n_estimators=trees, random_state=seed)
        model.fit(codes_train, factors_train[:, j])
        r[:, j] = np.abs(model.feature_importances_)
        acc[j] = float(np.mean(model.predict(codes_test) == factors_test[:, j]))
    return r, acc


def _normalised_entropy(p: np.ndarray, base: int) -> np.ndarray:
    """Entropy of each column of p (columns sum to one), in units of log(base): (columns,)."""
    p = np.clip(p, 1e-11, None)
    return -(p * np.log(p)).sum(0) / np.log(base)


def dci(codes_train: np.ndarray, factors_train: np.ndarray, codes_test: np.ndarray, factors_test: np.ndarray,
        seed: int = 0, trees: int = 100) -> dict[str, float | list[list[float]]]:
    """DCI: disentanglement (each code informs one factor; weighted by the code's share of importance),
    completeness (each factor is held by one code; mean over factors), informativeness (mean test accuracy of the
    trees). All in [0, 1]; `importance` is R (D, K)."""
    r, acc = importance_matrix(codes_train, factors_train, codes_test, factors_test, seed, trees)
    d, k = r.shape
    total = r.sum()
    if total <= 0:  # no code informs any factor (e.g. constant codes)
        return {"dci_disentanglement": 0.0, "dci_completeness": 0.0, "dci_informativeness": float(acc.mean()),
                "importance": r.tolist()}
    per_code = 1.0 - _normalised_entropy((r / np.clip(r.sum(1, keepdims=True), 1e-11, None)).T, k)  # (D,)
    weights = r.sum(1) / total
    per_factor = 1.0 - _normalised_entropy(r / np.clip(r.sum(0, keepdims=True), 1e-11, None), d)  # (K,)
    return {"dci_disentanglement": float((per_code * weights).sum()),
            "dci_completeness": float(per_factor.mean()),
            "dci_informativeness": float(acc.mean()),
            "importance": r.tolist()}


def scores(codes: np.ndarray, factors: np.ndarray, bins: int, n_train: int, n_test: int,
           seed: int = 0, trees: int = 100) -> dict[str, float | list]:
    """MIG on every row, and DCI with its trees fitted on the first n_train rows and scored on the next n_test
    (rows in random order): the control study's scores of one model."""
    if len(codes) < n_train + n_test:
        raise ValueError(f"{len(codes)} codes are fewer than dci_train + dci_test = {n_train + n_test}")
    out = mig(codes, factors, bins)
    out |= dci(codes[:n_train], factors[:n_train], codes[n_train:n_train + n_test],
               factors[n_train:n_train + n_test], seed, trees)
    mi = mutual_information(discretize(codes, bins), factors) / entropy(factors)  # (D, K), normalised
    out["normalised_mi"] = mi.tolist()
    return out


def seed_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean of per-seed values and its Student-t interval over the seeds (the seed-to-seed spread): (mean, lo, hi);
    one seed gives a zero-width interval."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return float(v.mean()), float(v.mean()), float(v.mean())
    half = float(student_t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return float(v.mean()), float(v.mean()) - half, float(v.mean()) + half
