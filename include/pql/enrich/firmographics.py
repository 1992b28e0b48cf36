"""Account firmographics by domain, from the CRM, a file or an enrichment API."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pql.lake import Lake, atomic_dir

COLUMNS = ["domain", "employees", "industry", "country", "revenue_band", "plan"]


def from_file(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet file with at least a 'domain' column."""
    if not path.exists():
        raise FileNotFoundError(f"enrichment file {path} does not exist (config enrichment.file)")
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    if "domain" not in df.columns:
        raise ValueError(f"{path}: needs a 'domain' column; found {', '.join(df.columns)}")
    return normalise(df)


def normalise(df: pd.DataFrame) -> pd.DataFrame:
    """One row per lower-cased domain with the known columns; missing values stay missing."""
    df = df.copy()
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = None
    df["domain"] = df["domain"].astype("string").str.strip().str.lower()
    df["employees"] = pd.to_numeric(df["employees"], errors="coerce").astype("Int64")
    df = df[df["domain"].notna() & (df["domain"] != "")]
    return df[COLUMNS].drop_duplicates("domain", keep="last").reset_index(drop=True)


def join(users: pd.DataFrame, accounts: pd.DataFrame) -> pd.DataFrame:
    """Attach firmographics to users through their email domain (missing → NaN, not an error).

    The plan a user's own events report (`event_plan`) wins over the provider's.
    """
    merged = users.merge(accounts, how="left", left_on="email_domain", right_on="domain")
    if "event_plan" in merged.columns:
        merged["plan"] = merged["event_plan"].fillna(merged["plan"])
        merged = merged.drop(columns=["event_plan"])
    return merged.drop(columns=["domain"])


def write(lake: Lake, accounts: pd.DataFrame) -> Path:
    """Keep this run's enrichment table in the lake (atomically)."""
    with atomic_dir(lake.accounts()) as tmp:
        normalise(accounts).to_parquet(tmp / "accounts.parquet", index=False)
    return lake.accounts() / "accounts.parquet"


def read(lake: Lake) -> pd.DataFrame:
    """The enrichment table kept by the last enrich step (empty when there is none)."""
    path = lake.accounts() / "accounts.parquet"
    return pd.read_parquet(path) if path.exists() else pd.DataFrame(columns=COLUMNS)
