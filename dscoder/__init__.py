"""dscoder: the DeepSeek-Coder system, from repository-level data to serving and evaluation."""

__version__ = "0.1.0"
