"""Example model handlers (see docs/HANDLERS.md)."""
