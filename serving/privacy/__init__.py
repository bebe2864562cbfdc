"""Privacy work on the event log: a user's records (export, deletion) and text retention (docs/privacy.md)."""
