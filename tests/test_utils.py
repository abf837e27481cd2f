import os
import stat

import pytest

from cac_align.utils import append_jsonl, atomic_write_text, read_jsonl


def test_atomic_write_has_umask_permissions_and_leaves_no_temp(tmp_path):
    p = tmp_path / "sub" / "a.txt"
    atomic_write_text(p, "hello")
    assert p.read_text() == "hello"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask
    assert [f.name for f in p.parent.iterdir()] == ["a.txt"]


def test_failed_atomic_write_keeps_the_old_file(tmp_path):
    from cac_align.utils import atomic_path

    p = tmp_path / "a.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["a.txt"]


def test_read_jsonl_ignores_a_torn_last_line(tmp_path):
    p = tmp_path / "r.jsonl"
    append_jsonl(p, {"a": 1})
    with p.open("a") as f:
        f.write('{"a": 2')
    assert read_jsonl(p) == [{"a": 1}]
    p.write_text('{"a": 1\n{"a": 2}\n')
    with pytest.raises(ValueError, match="r.jsonl:1"):
        read_jsonl(p)
