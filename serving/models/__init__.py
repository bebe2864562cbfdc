"""Model artifacts: the registry and the predictors serving loads from it (linear, transformer, windows)."""
