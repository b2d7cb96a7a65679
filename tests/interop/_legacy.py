"""Running PyPI daebus 0.0.31, which has our import name and so lives in its own virtualenv.

The virtualenv lives in ``<repo>/.cache/daebus-0.0.31-venv``. It is reused while it still
works and was built from the same requirements, and rebuilt otherwise. A file lock keeps
concurrent pytest runs from building it at the same time.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from _helpers import ServiceProcess

HERE = Path(__file__).resolve().parent
LEGACY_SERVICE = HERE / "legacy_service.py"
LEGACY_CALLER = HERE / "legacy_caller.py"
OUR_SERVICE = HERE / "our_service.py"

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_DIR = REPO_ROOT / ".cache" / "daebus-0.0.31-venv"
STAMP_NAME = "daebus-interop-stamp.json"

#: daebus 0.0.31 with the exact dependency versions of its requirements.txt, which are also
#: the versions 0.0.31's behaviour was checked with (later redis-py/websockets
#: releases also install, but would make the "legacy" side drift over time).
REQUIREMENTS = (
    "daebus==0.0.31",
    "redis==6.0.0",
    "apscheduler==3.11.0",
    "websockets==15.0.1",
)
#: Upper bound for building the venv (network installs included).
BUILD_TIMEOUT = 600.0

# Environment variables that would make the legacy interpreter see our code or our venv.
_LEAKY_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONSAFEPATH")


class LegacyVenvError(RuntimeError):
    """The 0.0.31 virtualenv could not be created or does not work."""


def legacy_environ(base: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment that is safe for the legacy interpreter."""
    env = dict(os.environ if base is None else base)
    for name in _LEAKY_VARIABLES:
        env.pop(name, None)
    env["PYTHONNOUSERSITE"] = "1"
    return env


def legacy_process(
    python: Path,
    script: Path | None,
    *args: str,
    code: str | None = None,
    redis_url: str,
    name: str | None = None,
) -> ServiceProcess:
    """A ServiceProcess running `script` (or `code`) with the 0.0.31 `python`.

    The environment is stripped of anything that could expose our package, and the working
    directory is this one, so ``-c`` code can import `_legacy_common` too.
    """
    return ServiceProcess(
        script,
        code=code,
        args=args,
        redis_url=redis_url,
        python=python,
        env=legacy_environ(),
        inherit_env=False,
        cwd=HERE,
        name=name,
    )


def venv_python(venv: Path = VENV_DIR) -> Path:
    """Path of the interpreter inside `venv`."""
    return venv / "bin" / "python"


def ensure_legacy_venv(venv: Path = VENV_DIR) -> tuple[Path, float, bool]:
    """Return (python, seconds spent, whether it was built), building the venv if needed."""
    started = time.monotonic()
    venv.parent.mkdir(parents=True, exist_ok=True)
    with _locked(venv.with_name(f"{venv.name}.lock")):
        if _works(venv):
            return venv_python(venv), time.monotonic() - started, False
        _build(venv)
        if not _works(venv):
            raise LegacyVenvError(f"{venv} was built but does not import daebus 0.0.31")
    return venv_python(venv), time.monotonic() - started, True


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _works(venv: Path) -> bool:
    stamp = venv / STAMP_NAME
    python = venv_python(venv)
    try:
        if json.loads(stamp.read_text()) != {"requirements": list(REQUIREMENTS)}:
            return False
    except (OSError, ValueError):
        return False
    if not python.exists():
        return False
    check = (
        "import sys, daebus; "
        "assert daebus.__version__ == '0.0.31', daebus.__version__; "
        "assert daebus.__file__.startswith(sys.prefix), daebus.__file__"
    )
    try:
        result = subprocess.run(
            [str(python), "-c", check],
            env=legacy_environ(),
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _build(venv: Path) -> None:
    shutil.rmtree(venv, ignore_errors=True)
    env = legacy_environ()
    # Installing with our own pip (`pip --python`) skips ensurepip in the new venv, which
    # is most of the cold-start time. Fall back to a venv with its own pip otherwise.
    own_pip = importlib.util.find_spec("pip") is not None
    venv_args = ["-m", "venv", *(["--without-pip"] if own_pip else []), str(venv)]
    _run([sys.executable, *venv_args], env)
    python = venv_python(venv)
    pip = (
        [sys.executable, "-m", "pip", "--python", str(python)]
        if own_pip
        else [
            str(python),
            "-m",
            "pip",
        ]
    )
    _run(
        [*pip, "install", "--no-input", "--disable-pip-version-check", "-q", *REQUIREMENTS],
        env,
    )
    (venv / STAMP_NAME).write_text(json.dumps({"requirements": list(REQUIREMENTS)}))


def _run(argv: list[str], env: dict[str, str]) -> None:
    try:
        result = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LegacyVenvError(f"{' '.join(argv)} failed: {exc}") from exc
    if result.returncode != 0:
        raise LegacyVenvError(
            f"{' '.join(argv)} exited with {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
