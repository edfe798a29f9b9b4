"""The config watcher's event filter: the file, what it resolves through, nothing else.

Real files and symlinks in a temporary directory; the filter is called as watchfiles
calls it, with each change's kind and path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from watchfiles import Change

from warmroute.config_watch import ConfigEvents, names_resolved_through, quiet_library_logs


def _configmap_version(directory: Path, name: str, text: str) -> None:
    """What the kubelet does: a new timestamped dir, then ``..data`` swapped onto it."""
    (directory / name).mkdir()
    (directory / name / "warmroute.yaml").write_text(text)
    os.symlink(name, directory / "..data_tmp")
    os.replace(directory / "..data_tmp", directory / "..data")


def test_a_plain_file_accepts_its_own_events_and_rejects_a_sibling_log(tmp_path: Path) -> None:
    path = tmp_path / "warmroute.yaml"
    path.write_text("pools: []\n")
    accept = ConfigEvents(path)
    assert accept(Change.modified, str(path))
    assert accept(Change.added, str(path))
    assert accept(Change.deleted, str(path))
    for sibling in ("warmroute.log", "warmroute.yaml.log", "other.yaml", "warmroute"):
        assert not accept(Change.modified, str(tmp_path / sibling)), sibling


def test_an_editors_write_temp_then_rename_is_accepted_at_the_rename(tmp_path: Path) -> None:
    path = tmp_path / "warmroute.yaml"
    path.write_text("a\n")
    accept = ConfigEvents(path)
    temp = tmp_path / ".warmroute.yaml.swp"
    temp.write_text("b\n")
    assert not accept(Change.added, str(temp))  # the temp file alone wakes nothing
    os.replace(temp, path)
    # inotify reports a rename as the old name going and the new name arriving
    assert not accept(Change.deleted, str(temp))
    assert accept(Change.added, str(path))


def test_a_configmap_swap_wakes_on_data_and_its_targets(tmp_path: Path) -> None:
    _configmap_version(tmp_path, "..2026_12_08_a", "a\n")
    path = tmp_path / "warmroute.yaml"
    os.symlink("..data/warmroute.yaml", path)
    assert names_resolved_through(path) == {"warmroute.yaml", "..data", "..2026_12_08_a"}
    accept = ConfigEvents(path)
    log = tmp_path / "warmroute.log"
    assert not accept(Change.modified, str(log))

    _configmap_version(tmp_path, "..2026_12_08_b", "b\n")
    assert accept(Change.added, str(tmp_path / "..data"))
    # Now resolved through the new dir; the old one's removal is still accepted.
    assert accept(Change.added, str(tmp_path / "..2026_12_08_b"))
    assert accept(Change.deleted, str(tmp_path / "..2026_12_08_a"))
    assert not accept(Change.added, str(tmp_path / "..data_tmp"))
    assert not accept(Change.modified, str(log))


def test_a_symlink_chain_in_the_directory_is_followed(tmp_path: Path) -> None:
    (tmp_path / "real.yaml").write_text("a\n")
    os.symlink("real.yaml", tmp_path / "current.yaml")
    os.symlink("current.yaml", tmp_path / "warmroute.yaml")
    path = tmp_path / "warmroute.yaml"
    assert names_resolved_through(path) == {"warmroute.yaml", "current.yaml", "real.yaml"}
    accept = ConfigEvents(path)
    assert accept(Change.modified, str(tmp_path / "real.yaml"))
    assert accept(Change.added, str(tmp_path / "current.yaml"))
    assert not accept(Change.modified, str(tmp_path / "warmroute.log"))


def test_a_symlink_loop_ends(tmp_path: Path) -> None:
    os.symlink("b.yaml", tmp_path / "a.yaml")
    os.symlink("a.yaml", tmp_path / "b.yaml")
    assert names_resolved_through(tmp_path / "a.yaml") == {"a.yaml", "b.yaml"}


def test_a_missing_file_still_accepts_its_own_name(tmp_path: Path) -> None:
    accept = ConfigEvents(tmp_path / "warmroute.yaml")
    assert accept(Change.added, str(tmp_path / "warmroute.yaml"))
    assert not accept(Change.added, str(tmp_path / "warmroute.log"))


@pytest.fixture
def library_logger() -> Iterator[logging.Logger]:
    library = logging.getLogger("watchfiles")
    saved = library.level
    library.setLevel(logging.NOTSET)
    yield library
    library.setLevel(saved)


def test_the_librarys_info_lines_are_quiet_unless_a_level_was_chosen(
    library_logger: logging.Logger,
) -> None:
    quiet_library_logs()
    assert not logging.getLogger("watchfiles.main").isEnabledFor(logging.INFO)
    library_logger.setLevel(logging.DEBUG)  # what `warmroute -vvv` does
    quiet_library_logs()
    assert logging.getLogger("watchfiles.main").isEnabledFor(logging.DEBUG)


@pytest.mark.parametrize(("flags", "debug"), [(["-vv"], False), (["-vvv"], True)])
def test_only_vvv_shows_the_librarys_own_lines(
    library_logger: logging.Logger, flags: list[str], debug: bool
) -> None:
    from tests.helpers import free_port
    from warmroute import cli

    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    try:
        with pytest.raises(SystemExit):  # nothing listens there: status exits 1
            cli.main([*flags, "status", "--admin", f"127.0.0.1:{free_port()}"])
    finally:  # the CLI configures logging for its process; this is pytest's
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
    quiet_library_logs()  # what the config watcher does when it starts
    assert logging.getLogger("watchfiles.main").isEnabledFor(logging.DEBUG) is debug
    assert not logging.getLogger("watchfiles.main").isEnabledFor(logging.INFO) or debug
