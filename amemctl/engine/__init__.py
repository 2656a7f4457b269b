"""Running pipelines: contexts, plans, run folders and reports."""
