"""What a researcher reads: figures (PNG) and the offline HTML report."""
