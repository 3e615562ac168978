"""Streaming model merging: one engine, many registered methods."""
