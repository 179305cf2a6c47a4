"""The Python code installed on this machine (the standard library, then the environment's
packages) as repositories: the corpus the quickstart and the experiments build when no data is
given."""

from __future__ import annotations

import sysconfig
from pathlib import Path

from dscoder.errors import UserError

HELD_OUT = ("json", "wsgiref", "xmlrpc", "sqlite3")  # standard-library packages kept out of training


def installed_python_roots() -> list[Path]:
    """This interpreter's own Python code: the standard library and the installed packages."""
    paths = sysconfig.get_paths()
    roots = []
    for key in ("stdlib", "purelib", "platlib"):
        path = Path(paths[key])
        if path.is_dir() and path not in roots:
            roots.append(path)
    return roots


def repositories(budget_bytes: int, held_out: tuple[str, ...] = HELD_OUT) -> tuple[list[Path], list[Path]]:
    """(training, held-out) repositories: the installed packages as folders, the standard
    library's packages named in `held_out` kept apart."""
    from dscoder.repo.collect import SKIPPED_DIRS

    train, held, total = [], [], 0
    roots = installed_python_roots()
    for root in roots:
        for folder in sorted(
            p
            for p in root.iterdir()
            if p.is_dir()
            and not p.name.startswith((".", "_"))
            and p.name not in SKIPPED_DIRS
            and not p.name.endswith((".dist-info", ".egg-info"))
        ):
            if folder.name in held_out and root == roots[0]:
                held.append(folder)
                continue
            size = sum(f.stat().st_size for f in folder.rglob("*.py") if f.is_file())
            if size == 0 or total + size > budget_bytes:
                continue
            train.append(folder)
            total += size
    if not train or not held:
        raise UserError("no installed Python packages found to build the demo corpus from")
    return train, held
