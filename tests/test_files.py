"""``attnsuite.files``: a file is replaced whole or not at all, and no temporary is left."""

from __future__ import annotations

import errno
import io
import os
import stat

import pytest

from attnsuite import files

OLD, NEW = "old report\n", "new report, longer than the old one\n" * 100


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("write, data", [(files.atomic_write_text, NEW),
                                         (files.atomic_write_bytes, NEW.encode())])
def test_replaces_the_file_with_ordinary_permissions_and_no_temporary(tmp_path, write, data):
    target = tmp_path / "report.md"
    target.write_text(OLD)
    write(target, data)
    assert target.read_text() == NEW, write.__name__
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"], write.__name__
    # mkstemp makes its file 0600: a report must be readable as any file the user writes.
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~_umask(), write.__name__


def test_creates_the_missing_folder(tmp_path):
    target = tmp_path / "a" / "b" / "conformance.json"
    files.atomic_write_text(target, NEW)
    assert target.read_text() == NEW


class _DiskFillsMidway(io.FileIO):
    """A file whose write stores half the data, then fails as a full disk does."""

    def write(self, data):
        super().write(bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")


def _fail(error):
    def failing(*args, **kwargs):
        raise error
    return failing


FAILURES = {
    "the write stops halfway": ("fdopen", lambda fd, mode: _DiskFillsMidway(fd, "w")),
    "fsync fails": ("fsync", _fail(OSError(errno.EIO, "Input/output error"))),
    "the rename fails": ("replace", _fail(OSError(errno.EXDEV, "Invalid cross-device link"))),
    "interrupted (Ctrl-C)": ("fsync", _fail(KeyboardInterrupt())),
}


@pytest.mark.parametrize("failure", FAILURES)
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, failure):
    target = tmp_path / "bench.md"
    target.write_text(OLD)
    name, replacement = FAILURES[failure]
    monkeypatch.setattr(files.os, name, replacement)
    with pytest.raises(BaseException) as raised:
        files.atomic_write_text(target, NEW)
    monkeypatch.undo()
    assert isinstance(raised.value, (OSError, KeyboardInterrupt)), f"{failure}: {raised.value!r}"
    assert target.read_text() == OLD, f"{failure}: the old file was changed"
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["bench.md"], f"{failure}: a temporary is left: {left}"


def test_text_that_cannot_be_encoded_changes_nothing(tmp_path):
    target = tmp_path / "conformance.md"
    target.write_text(OLD)
    with pytest.raises(UnicodeEncodeError):
        files.atomic_write_text(target, NEW + "\ud800")  # a lone surrogate has no UTF-8 form
    assert target.read_text() == OLD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conformance.md"]


def test_a_new_file_that_fails_is_not_created(tmp_path, monkeypatch):
    target = tmp_path / "bench.csv"
    monkeypatch.setattr(files.os, "fsync", _fail(OSError(errno.EIO, "Input/output error")))
    with pytest.raises(OSError):
        files.atomic_write_bytes(target, NEW.encode())
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == [], "a failed first write left a file behind"

