"""From evaluation results to the report: continual-learning metrics, paired-bootstrap statistics, plots."""
