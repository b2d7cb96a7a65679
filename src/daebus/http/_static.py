"""The folders :meth:`DaebusHttp.static` serves: files under a URL prefix, GET and HEAD.

Hand-written rather than aiohttp's ``StaticResource``, which has no index file, answers
a folder with 403 and serves dotfiles; the checks here are few. File system calls run
in the loop's default executor, never on the loop itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from .._routes import allow_header
from ._cors import CorsPolicy
from ._messages import json_response

__all__ = ["StaticFolder", "serve_static"]

_ALLOW = allow_header({"GET"})


@dataclass(frozen=True)
class StaticFolder:
    """``directory`` (resolved) served at the URL ``prefix``; a folder gives its ``index``."""

    prefix: str
    directory: Path
    index: str | None

    def find(self, path: str) -> Path | None:
        """The file served at the decoded URL ``path``, if any (blocking: file system)."""
        base = self.prefix.rstrip("/")
        if path != self.prefix and not path.startswith(base + "/"):
            return None
        relative = path[len(base) :]
        if any(part.startswith(".") for part in relative.split("/")):
            return None  # dotfiles, dot-folders (.git/) and ".."
        try:
            candidate = (self.directory / relative.lstrip("/")).resolve()
            if candidate != self.directory and self.directory not in candidate.parents:
                return None  # a symbolic link out of the folder
            if candidate.is_dir() and self.index:
                candidate = candidate / self.index
            return candidate if candidate.is_file() else None
        except (OSError, ValueError):
            return None


def _find(folders: Sequence[StaticFolder], path: str) -> Path | None:
    for folder in folders:
        found = folder.find(path)
        if found is not None:
            return found
    return None


async def serve_static(
    folders: Sequence[StaticFolder],
    request: web.Request,
    method: str,
    cors: CorsPolicy | None,
) -> web.StreamResponse:
    """The file at the request's path; 404 if none, 405 for a method other than GET/HEAD."""
    loop = asyncio.get_running_loop()
    found = await loop.run_in_executor(None, _find, tuple(folders), request.path)
    if found is None:
        return json_response({"error": "Not Found", "path": request.path}, 404)
    if method in ("GET", "HEAD"):
        return web.FileResponse(found)
    if method == "OPTIONS":
        if cors is not None and cors.is_preflight(request):
            return cors.preflight(request, {"GET"})
        return web.Response(status=204, headers={"Allow": _ALLOW})
    return json_response(
        {"error": "Method Not Allowed", "path": request.path, "method": method},
        405,
        headers={"Allow": _ALLOW},
    )
