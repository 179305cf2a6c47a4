"""Execution-based evaluation: benchmark formats (and, as they land, sandboxed execution and scores)."""
