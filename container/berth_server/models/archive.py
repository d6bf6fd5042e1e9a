"""Safe extraction of model.tar.gz archives: no absolute paths, no '..', no links leading outside, no devices."""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
from pathlib import Path

from berth_server.errors import InvalidRequest

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def is_archive(name: str) -> bool:
    """True for the archive names Berth extracts (SageMaker's model.tar.gz and friends)."""
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _escapes(path: str) -> bool:
    normalized = posixpath.normpath(path)
    return posixpath.isabs(path) or normalized == ".." or normalized.startswith("../")


def safe_join(root: Path, relative: str, source: str) -> Path:
    """root/relative, refused (InvalidRequest naming it) when relative is absolute or climbs out with '..'.

    S3 keys and archive members come from whoever wrote the bucket: they must never pick where we write.
    """
    if _escapes(relative) or "\\" in relative or any(part == ".." for part in relative.split("/")):
        raise InvalidRequest(f"unsafe name {relative!r} in {source!r}: it points outside the model cache")
    return root / posixpath.normpath(relative) if relative.strip("/") else root


def check_member(member: tarfile.TarInfo, source: str) -> None:
    """Refuse a member that could write outside the target or create a device."""
    name = member.name
    if _escapes(name) or "\\" in name or (len(name) > 1 and name[1] == ":"):
        raise InvalidRequest(f"unsafe archive {source!r}: member {name!r} points outside the model directory")
    if member.issym() or member.islnk():
        link = member.linkname
        # Symlinks resolve from the member's own directory; hard links from the archive root.
        resolved = posixpath.join(posixpath.dirname(name), link) if member.issym() else link
        if posixpath.isabs(link) or _escapes(resolved):
            raise InvalidRequest(f"unsafe archive {source!r}: link {name!r} -> {link!r} leads outside")
    elif not (member.isfile() or member.isdir()):
        raise InvalidRequest(f"unsafe archive {source!r}: member {name!r} is a device or fifo")


def extract_archive(archive: Path, target: Path, source: str) -> Path:
    """Extract `archive` into `target` (atomically, reused when complete); return the model directory."""
    done = target / ".berth-extracted"
    if not done.exists():
        partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()
                for member in members:
                    check_member(member, source)
                # The data filter re-checks everything above where Python has it (3.12+, backports).
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(partial, members=members, filter="data")
                else:  # pragma: no cover - old Pythons
                    tar.extractall(partial, members=members)
        except (tarfile.TarError, OSError) as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise InvalidRequest(f"cannot extract archive {source!r}: {exc}") from None
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        (partial / ".berth-extracted").write_text(source)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(partial, target)
    return _model_root(target)


def _model_root(target: Path) -> Path:
    """Archives made with `tar czf model.tar.gz model/` hold one top directory: serve from inside it."""
    entries = [p for p in target.iterdir() if p.name != ".berth-extracted"]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return target
