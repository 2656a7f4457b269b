"""The pipeline language: YAML files that declare experiments."""
