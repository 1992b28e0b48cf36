"""The predictive model kind: a calibrated logistic regression on point-in-time features.

Trained on (user, moment) rows labelled "converted within the horizon", evaluated on the latest
moments only (held out in time), saved as versions under the models folder and promoted only when
it beats the current version on the same held-out rows beyond noise (pql.scoring.auc).

Long because training, calibration, evaluation and the version store share one row shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import sklearn
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from pql.lake import atomic_dir, atomic_file
from pql.scoring import NoTrainedModel, auc

UNKNOWN = "unknown"
CALIBRATION_SHARE = 0.25  # the latest quarter of training moments calibrates the probabilities
ISOTONIC_MIN_ROWS = 1000  # below this isotonic calibration overfits; sigmoid is the safe choice
MIN_LEVEL_ROWS = 10  # rarer text values get unstable coefficients: they count as "unknown"
MAX_LEVELS = 50  # bounds the one-hot width (countries) and so memory when scoring millions
COEFFICIENT_COLUMNS = ["feature", "column", "coefficient"]  # column: the input it encodes
CHUNK_ROWS = 200_000  # rows encoded at once when scoring: bounds memory, keeps numpy vectorised


@dataclass
class Trained:
    """A trained version: the fitted estimator plus what it needs and how it did on the holdout."""

    version: str
    model: CalibratedClassifierCV
    numeric: list[str]
    text: list[str]
    metrics: dict
    trained_at: pd.Timestamp
    holdout_from: pd.Timestamp
    coefficients: pd.DataFrame = field(repr=False)

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.text]


class Encoder(TransformerMixin, BaseEstimator):
    """Numeric → log1p(max(x, 0)) with missing → 0 (+ an indicator); text → one-hot + unknown."""

    def __init__(self, numeric: list[str], text: list[str]):
        self.numeric = numeric
        self.text = text

    def fit(self, X: pd.DataFrame, y=None):
        self.missing_ = [c for c in self.numeric if np.isnan(_as_float(X[c])).any()]
        self.levels_ = {c: _levels(X[c]) for c in self.text}
        names, groups = [], []
        for c in self.numeric:
            names.append(c)
            groups.append(c)
            if c in self.missing_:
                names.append(f"{c}__missing")
                groups.append(c)
        for c in self.text:
            for v in [*self.levels_[c], UNKNOWN]:
                names.append(f"{c}={v}")
                groups.append(c)
        self.names_ = names
        self.groups_ = groups  # the input column each encoded column came from
        return self

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        out = np.zeros((len(X), len(self.names_)))
        j = 0
        for c in self.numeric:
            x = _as_float(X[c])
            gone = np.isnan(x)
            out[:, j] = np.log1p(np.clip(np.where(gone, 0.0, x), 0.0, None))
            j += 1
            if c in self.missing_:
                out[:, j] = gone
                j += 1
        rows = np.arange(len(X))
        for c in self.text:
            levels = self.levels_[c]
            codes = pd.Index(levels, dtype=object).get_indexer(_as_text(X[c]))
            codes[codes < 0] = len(levels)  # missing, empty, rare or unseen → unknown
            out[rows, j + codes] = 1.0
            j += len(levels) + 1
        return out


def train(
    frame: pd.DataFrame,
    numeric: list[str],
    text: list[str],
    *,
    label: str = "label",
    moment: str = "moment",
    holdout_from: pd.Timestamp,
    version: str,
    seed: int = 0,
) -> Trained:
    """Fit on moments before `holdout_from`, calibrate on the latest of those, evaluate on the rest.

    Raises ValueError when the training or held-out rows are empty or all of one class.
    """
    _require(frame, [*numeric, *text, label, moment])
    when = _utc(frame[moment]).dt.tz_convert(None).to_numpy()  # UTC, comparable as datetime64
    cut = _utc_ts(holdout_from)
    y = np.asarray(frame[label], dtype=bool)
    past = when < cut.tz_convert(None).to_datetime64()
    _two_classes(y[past], f"training rows (moment < {cut:%Y-%m-%d %H:%M})")
    _two_classes(y[~past], f"held-out rows (moment ≥ {cut:%Y-%m-%d %H:%M})")

    # Calibrate on the latest training moments, never on the rows the regression was fitted on:
    # probabilities calibrated in-sample are overconfident, and the latest behaviour matters most.
    seen = np.unique(when[past])
    if len(seen) < 2:
        raise ValueError(
            f"need at least 2 training moments before {cut:%Y-%m-%d}: the latest calibrate "
            f"the earlier ones' model; got {len(seen)}"
        )
    cal_from = seen[min(int(len(seen) * (1 - CALIBRATION_SHARE)), len(seen) - 1)]
    fit_rows = past & (when < cal_from)
    cal_rows = past & ~fit_rows
    _two_classes(y[fit_rows], f"fitting rows (moment < {pd.Timestamp(cal_from):%Y-%m-%d})")
    _two_classes(y[cal_rows], f"calibration rows (moments {pd.Timestamp(cal_from):%Y-%m-%d}…)")

    pipe = Pipeline(
        [
            ("encode", Encoder(list(numeric), list(text))),
            ("scale", StandardScaler()),
            # L2 and no class weights: reweighting classes would distort the probabilities.
            ("logit", LogisticRegression(C=1.0, l1_ratio=0.0, max_iter=2000, random_state=seed)),
        ]
    )
    pipe.fit(frame[fit_rows], y[fit_rows])
    cal = frame[cal_rows]
    method = _calibration_method(pipe, cal, y[cal_rows], when[cal_rows])
    model = CalibratedClassifierCV(FrozenEstimator(pipe), method=method).fit(cal, y[cal_rows])

    held = frame[~past]
    p = _proba(model, held)
    yh = y[~past]
    metrics = {
        "auc": float(roc_auc_score(yh, p)),
        "ece": expected_calibration_error(yh, p),
        "brier": float(brier_score_loss(yh, p)),
        "base_rate": float(yh.mean()),
        "mean_probability": float(p.mean()),
        "train_rows": int(past.sum()),
        "train_positives": int(y[past].sum()),
        "holdout_rows": int((~past).sum()),
        "holdout_positives": int(yh.sum()),
        "calibration": method,
        "calibration_rows": int(cal_rows.sum()),
    }
    enc, logit = pipe.named_steps["encode"], pipe.named_steps["logit"]
    coefficients = (
        pd.DataFrame({"feature": enc.names_, "column": enc.groups_, "coefficient": logit.coef_[0]})
        .sort_values("coefficient", key=np.abs, ascending=False, kind="stable")
        .reset_index(drop=True)
    )
    return Trained(
        version=version,
        model=model,
        numeric=list(numeric),
        text=list(text),
        metrics=metrics,
        trained_at=pd.Timestamp.now(tz="UTC").floor("s"),
        holdout_from=cut,
        coefficients=coefficients,
    )


def predict(trained: Trained, features: pd.DataFrame) -> np.ndarray:
    """The calibrated probability of converting within the horizon, per row."""
    _require(features, trained.features)
    return _proba(trained.model, features)


def top_features(trained: Trained, features: pd.DataFrame, k: int) -> list[list[str]]:
    """Per row, up to k input features that raise this user's probability most, strongest first."""
    _require(features, trained.features)
    if k <= 0:
        return [[] for _ in range(len(features))]
    pipe = _pipeline(trained)
    enc, scale = pipe.named_steps["encode"], pipe.named_steps["scale"]
    coef = pipe.named_steps["logit"].coef_[0]
    columns = list(dict.fromkeys(enc.groups_))
    # Sums the encoded columns (indicator, one-hot levels) back into their input column.
    group = np.zeros((len(enc.groups_), len(columns)))
    group[np.arange(len(enc.groups_)), [columns.index(g) for g in enc.groups_]] = 1.0
    names = np.array(columns, dtype=object)
    k = min(k, len(columns))
    out: list[list[str]] = []
    for start in range(0, len(features), CHUNK_ROWS):
        z = scale.transform(enc.transform(features.iloc[start : start + CHUNK_ROWS]))
        # Standardised training means are 0, so coef × z is the pull away from the average user.
        contrib = (z * coef) @ group
        order = np.argsort(-contrib, axis=1, kind="stable")[:, :k]
        # Descending, so the positive contributions are a prefix of each row.
        positive = (np.take_along_axis(contrib, order, axis=1) > 0).sum(axis=1)
        top = names[order].tolist()
        out.extend(row[:n] for row, n in zip(top, positive.tolist(), strict=True))
    return out


def expected_calibration_error(y, p, bins: int = 10) -> float:
    """Mean |observed rate − mean probability| over equal-width probability bins, by bin size."""
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    if len(p) == 0:
        raise ValueError("expected calibration error of no rows")
    b = np.minimum((np.clip(p, 0, 1) * bins).astype(int), bins - 1)
    gap = np.bincount(b, weights=y, minlength=bins) - np.bincount(b, weights=p, minlength=bins)
    return float(np.abs(gap).sum() / len(p))


def new_version(prefix: str, now: datetime) -> str:
    """A version name such as 'predictive-20261123-141559' (never reused: a second apart)."""
    return f"{prefix}-{now:%Y%m%d-%H%M%S}"


def save(trained: Trained, models_dir: Path) -> Path:
    """Write models_dir/<version>/ (model.joblib, metrics.json) whole or not at all."""
    final = Path(models_dir) / trained.version
    with atomic_dir(final) as tmp:
        joblib.dump(trained.model, tmp / "model.joblib")
        info = {
            "version": trained.version,
            "metrics": trained.metrics,
            "features": {"numeric": trained.numeric, "text": trained.text},
            "trained_at": trained.trained_at.isoformat(),
            "holdout_from": trained.holdout_from.isoformat(),
            "coefficients": trained.coefficients.to_dict(orient="records"),
            "sklearn": sklearn.__version__,  # a pickle only loads reliably with the same version
        }
        (tmp / "metrics.json").write_text(json.dumps(info, indent=2) + "\n")
    return final


def load(models_dir: Path, version: str | None = None) -> Trained:
    """The given version, or the promoted one (NoTrainedModel when none was promoted)."""
    version = version or current_version(models_dir)
    if version is None:
        raise NoTrainedModel(f"no model was promoted in {models_dir}")
    folder = Path(models_dir) / version
    info = json.loads((folder / "metrics.json").read_text())
    return Trained(
        version=info["version"],
        model=joblib.load(folder / "model.joblib"),
        numeric=info["features"]["numeric"],
        text=info["features"]["text"],
        metrics=info["metrics"],
        trained_at=pd.Timestamp(info["trained_at"]),
        holdout_from=pd.Timestamp(info["holdout_from"]),
        coefficients=pd.DataFrame(info["coefficients"], columns=COEFFICIENT_COLUMNS),
    )


def current_version(models_dir: Path) -> str | None:
    """The promoted version named in models_dir/current.json, if any."""
    path = Path(models_dir) / "current.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())["version"]


def versions(models_dir: Path) -> list[dict]:
    """Every saved version, newest first, with its held-out metrics and whether it is current."""
    models_dir = Path(models_dir)
    current = current_version(models_dir)
    out = []
    for path in models_dir.glob("*/metrics.json") if models_dir.exists() else []:
        info = json.loads(path.read_text())
        numbers = {k: v for k, v in info["metrics"].items() if isinstance(v, int | float)}
        out.append({"version": info["version"], "trained_at": info["trained_at"],
                    "holdout_from": info["holdout_from"], "current": info["version"] == current,
                    **numbers})  # fmt: skip
    return sorted(out, key=lambda v: v["trained_at"], reverse=True)


def promote(
    models_dir: Path, candidate: Trained, holdout: pd.DataFrame, *, label: str = "label"
) -> tuple[bool, dict]:
    """Make `candidate` current only if it beats the current version beyond noise.

    Both versions score the same held-out rows; the candidate wins when the 95% interval of the
    paired AUC difference (DeLong, correlated ROC curves) lies wholly above 0. A higher AUC by a
    hair keeps the current version. A current version that cannot score these rows (missing
    features, unreadable) loses; with no current version the candidate is promoted.
    """
    y = np.asarray(holdout[label], dtype=bool) if label in holdout else np.array([], bool)
    _two_classes(y, "held-out rows to compare models on")
    models_dir = Path(models_dir)
    if not (models_dir / candidate.version / "model.joblib").exists():
        save(candidate, models_dir)
    p_cand = predict(candidate, holdout)
    cand = auc.interval(y, p_cand)
    cur = current_version(models_dir)
    out = {
        "candidate": candidate.version,
        "candidate_auc": cand.auc,
        "candidate_auc_ci": [cand.low, cand.high],
        "current": cur,
        "current_auc": None,
        "holdout_rows": len(holdout),
        "holdout_positives": int(y.sum()),
    }
    rows = f"{len(y):,} held-out rows ({int(y.sum()):,} positives)"
    if cur is None:
        better = True
        reason = (f"promoted {candidate.version}: no current model (held-out AUC {cand.auc:.3f}, "
                  f"95% CI {cand.low:.3f}-{cand.high:.3f}, on {rows})")  # fmt: skip
    elif cur == candidate.version:
        better, reason = False, f"{candidate.version} is already the current model"
    else:
        p_cur, problem = _current_scores(models_dir, cur, holdout)
        if problem:
            better, reason = True, f"promoted {candidate.version}: current {cur} {problem}"
        else:
            d = auc.difference(y, p_cand, p_cur)
            out.update(current_auc=d.current, difference=d.difference,
                       difference_ci=[d.low, d.high], p_value=d.p_value)  # fmt: skip
            better = bool(d.better)
            reason = f"{'promoted ' + candidate.version if better else 'kept ' + cur}: {d}"
    if better:
        record = {
            "version": candidate.version,
            "promoted_at": pd.Timestamp.now(tz="UTC").floor("s").isoformat(),
            "holdout_auc": cand.auc,
            "previous": cur,
        }
        with atomic_file(models_dir / "current.json", "w") as f:
            f.write(json.dumps(record, indent=2) + "\n")
    out["reason"] = reason
    return better, out


def _current_scores(
    models_dir: Path, version: str, holdout: pd.DataFrame
) -> tuple[np.ndarray | None, str | None]:
    """The current version's probabilities on the holdout, or why it cannot score them."""
    try:
        current = load(models_dir, version)
    except Exception as e:  # any unreadable version (gone, corrupt, other sklearn) cannot serve
        return None, f"cannot be loaded ({type(e).__name__}: {e})"
    gone = [c for c in current.features if c not in holdout.columns]
    if gone:
        return None, f"needs features no longer produced: {', '.join(gone)}"
    return predict(current, holdout), None


def _calibration_method(pipe: Pipeline, cal: pd.DataFrame, y: np.ndarray, when: np.ndarray) -> str:
    """Sigmoid, unless there are enough rows and isotonic does better on the later half of them."""
    if len(y) < ISOTONIC_MIN_ROWS:
        return "sigmoid"
    # Deterministic: fit each method on the earlier half (by moment), compare Brier on the later.
    order = np.argsort(when, kind="stable")
    a, b = order[: len(order) // 2], order[len(order) // 2 :]
    if len(np.unique(y[a])) < 2 or len(np.unique(y[b])) < 2:
        return "sigmoid"
    brier = {}
    for method in ("sigmoid", "isotonic"):
        m = CalibratedClassifierCV(FrozenEstimator(pipe), method=method)
        m.fit(cal.iloc[a], y[a])
        brier[method] = brier_score_loss(y[b], _proba(m, cal.iloc[b]))
    return "isotonic" if brier["isotonic"] < brier["sigmoid"] else "sigmoid"


def _proba(model: CalibratedClassifierCV, X: pd.DataFrame) -> np.ndarray:
    out = np.empty(len(X))
    for start in range(0, len(X), CHUNK_ROWS):
        part = X.iloc[start : start + CHUNK_ROWS]
        out[start : start + len(part)] = model.predict_proba(part)[:, 1]
    return out


def _pipeline(trained: Trained) -> Pipeline:
    return trained.model.estimator.estimator  # CalibratedClassifierCV → FrozenEstimator → Pipeline


def _require(frame: pd.DataFrame, columns: list[str]) -> None:
    gone = [c for c in columns if c not in frame.columns]
    if gone:
        raise ValueError(f"missing feature columns: {', '.join(gone)}")


def _two_classes(y: np.ndarray, what: str) -> None:
    if len(y) == 0:
        raise ValueError(f"no {what}: cannot train or evaluate a model")
    if y.all() or not y.any():
        kind = "converted" if y.all() else "did not convert"
        raise ValueError(f"all {len(y)} {what} {kind}: need both outcomes to train or evaluate")


def _as_float(s: pd.Series) -> np.ndarray:
    x = pd.to_numeric(s, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    return np.where(np.isfinite(x), x, np.nan)  # ±inf is as unusable as missing (and a copy)


def _as_text(s: pd.Series) -> pd.Series:
    if pd.api.types.is_string_dtype(s) or s.dtype == object:
        return s
    return s.astype("string")  # e.g. a numeric revenue band: match levels by their text


def _levels(s: pd.Series) -> list[str]:
    counts = _as_text(s).dropna().astype(str).value_counts()
    counts = counts[(counts >= MIN_LEVEL_ROWS) & (counts.index != "") & (counts.index != UNKNOWN)]
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))  # deterministic ties
    return [v for v, _ in ranked[:MAX_LEVELS]]


def _utc(s: pd.Series) -> pd.Series:
    s = pd.to_datetime(s)
    return s.dt.tz_localize("UTC") if s.dt.tz is None else s.dt.tz_convert("UTC")


def _utc_ts(t) -> pd.Timestamp:
    t = pd.Timestamp(t)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
