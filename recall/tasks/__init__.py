"""Tasks: raw records -> instruction prompts + reference answers, each with its metric."""
