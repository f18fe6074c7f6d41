"""A command checks its outputs when it starts and writes them minutes later: a file that
appears at an output path in between is not replaced without --force (``never_replace``)."""

from __future__ import annotations

import pytest

from unrollsci._io import OutputExistsError, atomic_write_text, never_replace, publish


def test_a_file_that_appeared_meanwhile_is_not_replaced(tmp_path):
    out = tmp_path / "figure.png"
    with never_replace([out]):
        out.write_text("the user's file")  # appears while the command runs
        with pytest.raises(OutputExistsError, match="appeared while this command ran"):
            atomic_write_text(out, "the command's output")
    assert out.read_text() == "the user's file"
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]  # no temporary left


def test_outputs_are_written_when_the_path_is_still_free(tmp_path):
    out, other = tmp_path / "a.txt", tmp_path / "b.txt"
    other.write_text("old")
    with never_replace([out]):
        atomic_write_text(out, "new")
        atomic_write_text(other, "replaced")  # not protected: replaced as usual
    assert out.read_text() == "new" and other.read_text() == "replaced"
    atomic_write_text(out, "again")  # outside the block: the usual atomic replace
    assert out.read_text() == "again"


def test_publish_moves_a_temporary_file(tmp_path):
    tmp, out = tmp_path / ".x.tmp", tmp_path / "x.txt"
    tmp.write_text("content")
    with never_replace([out]):
        publish(tmp, out)
    assert out.read_text() == "content" and not tmp.exists()
    tmp.write_text("second")
    with never_replace([out]), pytest.raises(OutputExistsError):
        publish(tmp, out)
    assert out.read_text() == "content" and not tmp.exists()


def test_force_lets_the_command_replace(tmp_path):
    out = tmp_path / "figure.png"
    with never_replace([out], force=True):
        out.write_text("the user's file")
        atomic_write_text(out, "the command's output")
    assert out.read_text() == "the command's output"
