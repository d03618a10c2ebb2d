"""The web app's files as nginx serves them: webapp/ copied into the stack's var dir with a
content hash in every asset's name (`js/app.js` -> `assets/app.3f2a1c9e.js`), so that nginx
can let browsers cache an asset for a year and a new release is a new name.

index.html keeps its name (served with `no-cache`) and is rewritten to point at the hashed
names; each JavaScript module's relative imports are rewritten too. A module's hash covers its
imports' hashed names, so changing one module renames it and every module that imports it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
from pathlib import Path

from server.infra.settings import PROJECT_ROOT

WEBAPP_SOURCE = PROJECT_ROOT / "webapp"
HASH_LENGTH = 8
# src="…" / href="…" in index.html; relative module specifiers in import/export statements
# (`import x from "./a.js"`, `export { y } from "./b.js"`, `import "./c.js"`, `import("./d.js")`).
HTML_REFERENCE = re.compile(r'(\b(?:src|href)=")([^"#?:]+)(")')
JS_IMPORT = re.compile(r'(\b(?:from|import)\s*\(?\s*["\'])(\.{1,2}/[^"\']+)(["\'])')


class AssetError(Exception):
    """webapp/ cannot be published as it is; the message names the file."""


class _Publisher:
    """Hashes and copies each asset once, dependencies first."""

    def __init__(self, source: Path, target: Path) -> None:
        self.source = source
        self.assets = target / "assets"
        self.published: dict[Path, str] = {}  # source file -> its hashed name
        self.in_progress: set[Path] = set()

    def publish(self, file: Path) -> str:
        """The hashed name under /assets/ of `file` (a file of webapp/), copied there."""
        file = file.resolve()
        if file in self.published:
            return self.published[file]
        if self.source not in file.parents or not file.is_file():
            raise AssetError(f"{file} is referenced but is not a file of {self.source}")
        if file in self.in_progress:
            raise AssetError(f"{file} imports itself through a cycle of modules")
        self.in_progress.add(file)
        content = file.read_bytes()
        if file.suffix in (".js", ".mjs"):
            content = self._rewrite_imports(file, content.decode("utf-8")).encode("utf-8")
        digest = hashlib.sha256(content).hexdigest()[:HASH_LENGTH]
        name = f"{file.stem}.{digest}{file.suffix}"
        (self.assets / name).write_bytes(content)
        self.in_progress.discard(file)
        self.published[file] = name
        return name

    def _rewrite_imports(self, file: Path, text: str) -> str:
        # Every asset sits in the same flat folder, so an import is "./<hashed name>".
        def hashed(match: re.Match[str]) -> str:
            name = self.publish(file.parent / match.group(2))
            return f"{match.group(1)}./{name}{match.group(3)}"

        return JS_IMPORT.sub(hashed, text)


def publish_webapp(target: Path, source: Path = WEBAPP_SOURCE) -> dict[str, str]:
    """Build the served copy of `source` in `target` (replaced whole): index.html and assets/.
    Returns each referenced file (relative to `source`) and its URL."""
    staging = target.with_name(target.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "assets").mkdir(parents=True)
    publisher = _Publisher(source.resolve(), staging)
    html = (source / "index.html").read_text(encoding="utf-8")

    def hashed(match: re.Match[str]) -> str:
        reference = match.group(2)
        if reference.startswith("/") or reference.startswith("data"):
            return match.group(0)
        name = publisher.publish(source / reference)
        return f"{match.group(1)}/assets/{name}{match.group(3)}"

    html = HTML_REFERENCE.sub(hashed, html)
    # Every module is announced up front, so the browser fetches the import graph in parallel
    # instead of one level at a time.
    linked = set(re.findall(r'/assets/([^"]+)"', html))
    preloads = "".join(f'    <link rel="modulepreload" href="/assets/{name}">\n'
                       for name in sorted(publisher.published.values())
                       if name.endswith(".js") and name not in linked)
    html = html.replace("</head>", preloads + "</head>", 1)
    (staging / "index.html").write_text(html, encoding="utf-8")
    # The served copy is swapped in whole: nginx never sees a half-written folder for long.
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    root = source.resolve()
    return {str(path.relative_to(root)): f"/assets/{name}"
            for path, name in publisher.published.items()}


def unreachable_for_workers(target: Path) -> Path | None:
    """The first folder above `target` that nginx's workers cannot pass through, if any.
    Started by root, nginx runs its workers as an unprivileged user, which reaches the files
    only through folders open to others (o+x); a 0700 home or temp folder hides them."""
    if os.geteuid() != 0:
        return None  # the workers run as the user who owns the files
    for folder in reversed(target.resolve().parents):
        if not folder.stat().st_mode & stat.S_IXOTH:
            return folder
    return None
