"""Repository-level code data: sources, languages and (later) the pipeline steps."""
