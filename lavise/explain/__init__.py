"""Explaining filters (no annotations needed): the method registry, the pass over the maps, words, tables, heatmaps."""
