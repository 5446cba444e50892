"""Scoring against ground truth: overlaps, recall@s, NetDissect, average precision."""
