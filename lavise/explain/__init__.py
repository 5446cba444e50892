"""Per-filter explanation methods (a registry), the explaining pass, nearest words, heatmap sheets."""
