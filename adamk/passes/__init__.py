"""Passes over the adamk dialect, one per file (see each module's docstring)."""
