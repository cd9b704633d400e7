"""Where the built-in rule files live, and the template library they define.

The built-in YAML ships inside the package (`mlfs/rules/`, so wheels carry it); the
project's top-level `rules/` is a link to it. MLFS_RULES_DIR points elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlfs
from mlfs.policy.errors import Problem, RuleError
from mlfs.policy.model import RuleFile
from mlfs.policy.parse import parse_rule_file
from mlfs.policy.templates import TemplateLibrary

DEFAULTS_FILE = "defaults.yaml"
TEMPLATES_DIR = "templates"
ENV_DIR = "env"


def rules_dir() -> Path:
    override = os.environ.get("MLFS_RULES_DIR")
    if override:
        return Path(override)
    package = Path(mlfs.__file__).resolve().parent
    for candidate in (package.parent / "rules", package / "rules"):
        if (candidate / DEFAULTS_FILE).is_file():
            return candidate
    raise RuleError(f"built-in rules not found (looked in {package.parent / 'rules'} and "
                    f"{package / 'rules'}); set MLFS_RULES_DIR")


def template_files(base: Path) -> list[Path]:
    return sorted((base / TEMPLATES_DIR).glob("*.yaml"))


def env_names(base: Path) -> list[str]:
    return sorted(p.stem for p in (base / ENV_DIR).glob("*.yaml"))


def load_library(base: Path, problems: list[Problem]) -> TemplateLibrary:
    """All templates defined under <base>/templates/, each template checked on its own."""
    files: list[RuleFile] = []
    for path in template_files(base):
        parsed, report = parse_rule_file(path)
        problems.extend(report.problems)
        if parsed is not None:
            files.append(parsed)
    library = TemplateLibrary()
    for f in files:
        library = library.with_local(f.templates, problems)
    library.check_all(problems)
    return library
