"""`dscoder experiment`: the DeepSeek-Coder paper's design choices (FIM rate, repository-level
data, context extension) reproduced at laptop scale, with intervals and verdicts."""
