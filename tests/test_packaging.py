"""Nova installs like a library: the wheel holds one import package, `nova`, with its default
configuration and type information, and runs from any directory; a user's type checker sees a
misspelt call option."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import nova
from nova import llm

ROOT = Path(__file__).resolve().parents[1]


def _source_copy(dest: Path) -> Path:
    """The checkout without its build leftovers, links kept, so the build sees what git holds."""
    skip = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")
    shutil.copytree(ROOT, dest, symlinks=True, ignore=skip)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        import setuptools  # noqa: F401  # the build backend, from the test extra
    except ImportError:
        pytest.skip("setuptools is not installed here: the wheel cannot be built offline")
    work = tmp_path_factory.mktemp("wheel")
    source = _source_copy(work / "src")
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(work),
            ".",
        ],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (path,) = work.glob("nova_llm-*.whl")
    return path


def test_the_wheel_holds_one_import_package_with_its_default_config_and_types(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("nova_llm-")}
    assert tops == {"nova"}
    assert {"nova/default.toml", "nova/py.typed", "nova/actors/router.py", "nova/supervisors/tree.py"} <= set(
        names
    )


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtual environment with the wheel installed. Its dependencies are borrowed from this
    environment by a path entry (no download); Nova itself comes from the wheel alone."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # A plain path line: the .pth files there (this checkout's editable install) are not run.
    Path(purelib, "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
        check=True,
        timeout=300,
    )
    yield venv


def _run(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOVA_", "PYTHON"))}
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_installed_nova_answers_from_any_directory_on_its_packaged_default(
    installed: Path, tmp_path: Path
) -> None:
    where = _run(
        installed, "python", "-c", "import nova, json; print(json.dumps(nova.__file__))", cwd=tmp_path
    )
    assert where.returncode == 0, where.stderr
    assert json.loads(where.stdout).startswith(str(installed)), (
        "nova must come from the wheel, not the checkout"
    )

    alone = _run(installed, "python", "-c", "import actors", cwd=tmp_path)
    assert alone.returncode != 0 and "No module named 'actors'" in alone.stderr

    check = _run(installed, "nova", "config", "check", "--json", cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["source"].endswith("nova/default.toml")

    asked = _run(installed, "nova", "ask", "What is the capital of France?", cwd=tmp_path)
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.strip()


def test_call_options_are_typed_for_the_users_type_checker(tmp_path: Path) -> None:
    try:
        from mypy import api
    except ImportError:
        pytest.skip("mypy is not installed (it comes with the dev extra)")
    program = tmp_path / "user.py"
    program.write_text(
        "import nova.llm\n\n"
        "nova.llm.chat('hi', temperature=0.2, timeout=5, fallback=['openai/gpt-4o-mini'])\n"
        "nova.llm.chat('hi', temprature=0.2)\n"
        "nova.llm.chat('hi', max_tokens='many')\n"
    )
    out, _, status = api.run(
        ["--strict", "--no-error-summary", "--cache-dir", str(tmp_path / "cache"), str(program)]
    )
    problems = [line for line in out.splitlines() if ": error:" in line]
    assert status == 1
    assert [line.split(":")[1] for line in problems] == ["4", "5"], out
    assert '"temprature"' in problems[0]


def test_the_typed_options_are_the_options_the_facade_takes() -> None:
    assert set(llm.CallKwargs.__optional_keys__) == llm._PARAMS | llm._OPTIONS | {"model"}
    assert Path(nova.__file__).with_name("py.typed").is_file()
