"""A/B experiments: sticky arm assignment and experiment configuration."""
