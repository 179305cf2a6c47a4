"""Inference: the generation engine, prompts (completion, insertion, repository, chat) and the server."""
