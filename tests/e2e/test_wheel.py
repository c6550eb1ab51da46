"""What ships: the wheel holds every module of the checkout, and the tests run the wheel as users install it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from support.service_process import EXECUTABLE_VARIABLE, executable

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def _checkout_files() -> list[str]:
    """The files of the checkout as a clean clone would have them (tracked, or new and not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [path for path in listed if (ROOT / path).is_file()]


class TestWheel:
    """The wheel built from the checkout is complete."""

    def test_every_module_is_in_the_wheel(self, tmp_path: Path) -> None:
        """Every module under service/, http_ingress/ and protos/routee/ is in the wheel (a package listed by hand
        and forgotten would be missing)."""
        files = _checkout_files()
        clone = tmp_path / "clone"  # No build/ or *.egg-info of an earlier build: they would hide an omission.
        for path in files:
            (clone / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / path, clone / path)
        subprocess.run(
            [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(clone)],
            check=True,
            capture_output=True,
            timeout=300,
        )
        (wheel,) = (tmp_path / "dist").glob("routee_callbacks-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            shipped = set(archive.namelist())
        modules = {
            path.removeprefix("protos/")
            for path in files
            if path.startswith(("service/", "http_ingress/", "protos/routee/")) and path.endswith((".py", ".pyi"))
        }
        assert "service/store/__init__.py" in modules
        assert modules - shipped == set()

    @pytest.mark.skipif(not os.environ.get(EXECUTABLE_VARIABLE), reason="run by `make test`, on the wheel's venv")
    def test_the_service_under_test_is_the_installed_wheel(self) -> None:
        """Under ``make test`` the console script comes from a venv where the wheel is installed, not editable."""
        script = Path(executable()).absolute()
        python = script.with_name("python")
        found = subprocess.run(
            [
                python,
                "-c",
                "import service, importlib.metadata as m; "
                "print(service.__file__); print(m.distribution('routee-callbacks').read_text('direct_url.json'))",
            ],
            cwd="/",
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        module = Path(found[0]).resolve()
        assert module.is_relative_to(script.parents[1])
        assert "site-packages" in module.parts
        assert module != ROOT / "service" / "__init__.py"
        direct_url = json.loads(found[1]) if found[1] != "None" else {}
        assert not direct_url.get("dir_info", {}).get("editable", False)
