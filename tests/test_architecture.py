"""The architecture holds: the import contracts of pyproject.toml, checked by import-linter.

- ``pipeline`` flows one way in layers (dicom, preprocess, data, train, trial, explain,
  final, active; the command lines on top);
- ``pipeline`` never imports ``search``; ``search`` imports only ``pipeline``'s face;
- no import cycles: no two modules (or sub-packages) of one package import each other,
  even through others.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from importlinter.application import use_cases
from importlinter.configuration import configure

ROOT = Path(__file__).resolve().parents[1]


def _lint(config: Path) -> bool:
    configure()
    return bool(use_cases.lint_imports(config_filename=str(config), cache_dir=None, no_logo=True))


def test_the_import_contracts_hold(capsys):
    kept = _lint(ROOT / "pyproject.toml")
    out = capsys.readouterr().out
    assert kept, out
    assert "Contracts: 4 kept, 0 broken." in out, out


def test_a_new_cycle_breaks_the_contract(tmp_path, monkeypatch, capsys):
    """The cycle check can fail: two modules that import each other break it."""
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cyclic import b\n")
    (package / "b.py").write_text("from cyclic import a\n")
    config = tmp_path / "pyproject.toml"
    config.write_text(
        textwrap.dedent(
            """
            [tool.importlinter]
            root_packages = ["cyclic"]

            [[tool.importlinter.contracts]]
            name = "no cycles"
            type = "acyclic_siblings"
            ancestors = ["cyclic"]
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert not _lint(config)
    assert "BROKEN" in capsys.readouterr().out
