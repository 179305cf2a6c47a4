"""A repository as DeepSeek-Coder sees it (paper sections 2.1 and 2.3), shared by the data build
and repository-level completion: collect.py reads its files (folder, git, archive),
languages.py names their languages, imports.py finds what each file depends on, and
dependencies.py orders them with Algorithm 1 (`analyze`, the one entry point)."""
