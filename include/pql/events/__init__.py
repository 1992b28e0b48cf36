"""Product events: vendor exports in, canonical deduplicated Parquet out."""
