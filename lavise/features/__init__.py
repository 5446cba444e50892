"""The feature cache: its format, the extraction pass, and activation statistics."""
