"""The synthetic support-email corpus: `generate()` and `write_corpus()` (see `training.synth.corpus`).

The package holds the generator (`corpus`), long multi-paragraph mail (`long`), how customers write (`style`),
what they ask (`intents`, parsed by `templates`) and the slot values that fill the requests (`templates`).
"""

from training.synth.corpus import (
    COLUMNS,
    DRIFT_TERMS,
    LENGTHS,
    LONG_COLUMNS,
    QUEUES,
    SynthError,
    generate,
    write_corpus,
)

__all__ = ["COLUMNS", "DRIFT_TERMS", "LENGTHS", "LONG_COLUMNS", "QUEUES", "SynthError", "generate", "write_corpus"]
