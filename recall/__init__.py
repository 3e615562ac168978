"""RECALL: representation-aligned, layer-wise model merging for continual learning of LLMs."""

__version__ = "0.1.0"
