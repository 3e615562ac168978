"""The continual-learning pipeline: validated params, stage functions over files, tracking."""
