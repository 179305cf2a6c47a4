"""The quickstart: the whole pipeline on this machine's Python code (see stages.py)."""
