"""The event log and what writes it: the store interface, its SQLite backend, the buffered writer, text redaction."""
