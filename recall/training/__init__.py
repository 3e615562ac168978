"""Training a model on one task: LoRA fine-tuning, optionally with an EWC penalty."""
