"""Scoring models: each turns user features into a 0-100 score, a flag and plain-word reasons."""
