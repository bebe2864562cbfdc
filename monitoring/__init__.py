"""Monitoring: drift and per-arm quality reports over the event log."""
