"""Writing an installer-owned tree into a target root: idempotent, never outside the root.

Every change is recorded as a line (``write /path``, ``chmod 0750 /path``, ``link ... -> ...``,
``remove ...``) so that ``edged install`` prints what it did, ``--dry-run`` prints what it would
do and a second run with the same inputs prints only "N paths already up to date". Parents that
resolve outside the root (an image whose ``usr/lib`` is an absolute symlink) are refused.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path


class InstallError(Exception):
    """The installation cannot proceed; the message says what to change."""


class Tree:
    """Writes into the target root idempotently and records what changed (or would change)."""

    def __init__(self, root: Path, dry_run: bool):
        self.root, self.dry_run, self.real_root = root, dry_run, root.resolve()
        self.actions: list[str] = []
        self.unchanged = 0

    def path(self, rel: str) -> Path:
        """``root/rel``, refusing parents that resolve outside root (e.g. usr/lib -> /usr/lib)."""
        path = self.root / rel.strip("/")
        parent = path.parent.resolve()
        if parent != self.real_root and self.real_root not in parent.parents:
            raise InstallError(f"{path.parent} resolves to {parent}, outside {self.root}")
        return path

    def _do(self, message: str, action: Callable[[], object]) -> None:
        self.actions.append(message)
        if not self.dry_run:
            action()

    def mkdir(self, rel: str, mode: int | None = 0o755) -> None:
        """Create ``rel`` and missing parents (0755); ``mode=None`` leaves an existing one be."""
        parts = Path(rel.strip("/")).parts
        for depth in range(1, len(parts) + 1):
            sub, last = "/".join(parts[:depth]), depth == len(parts)
            path = self.path(sub)
            if not path.exists() and not path.is_symlink():
                chosen = mode if last and mode is not None else 0o755
                self._do(f"mkdir /{sub}", lambda p=path, m=chosen: (p.mkdir(), p.chmod(m)))
            elif last and mode is not None:
                self._mode(path, mode, sub)

    def _mode(self, path: Path, mode: int, rel: str) -> None:
        if path.exists() and stat.S_IMODE(path.lstat().st_mode) != mode:
            self._do(f"chmod {mode:04o} /{rel}", lambda: path.chmod(mode))
        else:
            self.unchanged += 1

    def file(self, rel: str, data: bytes, mode: int = 0o644) -> None:
        rel = rel.strip("/")
        path = self.path(rel)
        if path.is_file() and not path.is_symlink() and path.read_bytes() == data:
            return self._mode(path, mode, rel)
        self.mkdir(str(Path(rel).parent), None)
        self._do(f"write /{rel}", lambda: _atomic_write(path, data, mode))

    def symlink(self, rel: str, target: str | None) -> None:
        """Point ``rel`` at ``target``; ``target=None`` removes the link."""
        path = self.path(rel)
        if path.is_symlink() and os.readlink(path) == target or target is None and not path.is_symlink():
            self.unchanged += 1
        elif target is None:
            self._do(f"remove /{rel}", path.unlink)
        else:
            self.mkdir(str(Path(rel).parent), None)
            self._do(f"link /{rel} -> {target}", lambda: (_remove(path), path.symlink_to(target)))

    def mirror(self, rel_dir: str, files: dict[str, bytes | tuple[bytes, int]], mode: int = 0o644,
               links: dict[str, str] | None = None) -> None:
        """Make ``rel_dir`` hold exactly ``files`` (data, or (data, mode)) and ``links``:
        installer-owned trees lose stale files."""
        rel_dir, links = rel_dir.strip("/"), links or {}
        self.mkdir(rel_dir)
        for name, data in sorted(files.items()):
            content, file_mode = data if isinstance(data, tuple) else (data, mode)
            self.file(f"{rel_dir}/{name}", content, file_mode)
        for name, target in sorted(links.items()):
            self.symlink(f"{rel_dir}/{name}", target)
        base = self.path(rel_dir)
        keep = set(files) | set(links)
        dirs = {str(Path(n).parent) for n in keep}
        for path in sorted(_walk(base) if base.is_dir() else [], reverse=True):
            rel = path.relative_to(base).as_posix()
            if rel not in keep and not any(d == rel or d.startswith(rel + "/") for d in dirs):
                self._do(f"remove /{rel_dir}/{rel}", lambda p=path: _remove(p))


def _walk(base: Path) -> list[Path]:
    """Everything under ``base`` without following symlinks (a dist's links stay links)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(base):
        out += [Path(dirpath) / n for n in dirnames + filenames]
    return out


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.edged-tmp")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    os.replace(tmp, path)


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
