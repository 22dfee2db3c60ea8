"""Data: items, media loading and the unified task folder format."""
