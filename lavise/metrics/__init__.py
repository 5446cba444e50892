"""Scoring against ground truth: overlaps and IoU, each pair's ground truth, recall@s, NetDissect, average precision."""
