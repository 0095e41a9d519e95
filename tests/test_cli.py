"""agentstream-worker's messages for mistakes in the user's app module."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentstream.cli import run_worker
from agentstream.exit_codes import EXIT_CONFIG


@pytest.fixture(name="app_dir")
def _app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty working directory whose modules are forgotten afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def _check(spec: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = run_worker(["--app", spec, "--check"])
    return status, capsys.readouterr().err


class TestImportApp:
    def test_exception_in_the_module_shows_its_file_line_and_traceback(
        self, app_dir: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A KeyError raised by the user's module shows where, not just the key."""
        (app_dir / "buggy_app.py").write_text(
            "from agentstream import App\n"
            "settings = {}\n"
            "TIMEOUT = settings['timeout']\n"
            "app = App()\n"
        )
        status, err = _check("buggy_app:app", capsys)

        assert status == EXIT_CONFIG
        assert "importing 'buggy_app' raised KeyError" in err
        assert f'File "{app_dir / "buggy_app.py"}", line 3, in <module>' in err
        assert "TIMEOUT = settings['timeout']" in err
        assert "KeyError: 'timeout'" in err
        assert "importlib" not in err  # the machinery's frames are left out

    def test_missing_dependency_of_the_module_shows_the_traceback(
        self, app_dir: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An import inside the user's module that fails is their code's error."""
        (app_dir / "needs_dep.py").write_text("import no_such_dependency_xyz\n")
        status, err = _check("needs_dep:app", capsys)

        assert status == EXIT_CONFIG
        assert "raised ModuleNotFoundError" in err
        assert 'needs_dep.py", line 1' in err

    def test_missing_module(
        self, app_dir: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A module that does not exist is named, with where it was looked for."""
        status, err = _check("no_such_module_abc:app", capsys)

        assert status == EXIT_CONFIG
        assert "no module named 'no_such_module_abc'" in err
        assert str(app_dir) in err

    def test_missing_attribute_says_has_no_attribute(
        self, app_dir: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--app module:missing says the module has no such attribute."""
        (app_dir / "good_app.py").write_text(
            "from agentstream import App\napp = App()\n"
        )
        status, err = _check("good_app:missing", capsys)

        assert status == EXIT_CONFIG
        assert "has no attribute 'missing'" in err
        assert "good_app.py" in err

    def test_attribute_that_is_not_an_app(
        self, app_dir: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An attribute of another type is named with its type."""
        (app_dir / "other_app.py").write_text("def app():\n    pass\n")
        status, err = _check("other_app:app", capsys)

        assert status == EXIT_CONFIG
        assert "is a function, not an agentstream.App" in err
