"""poisonlab's tar reader against Python's tarfile (webdataset's reader): the same members, or a refusal.

Each archive is built from raw bytes (``rawtar``). Where both readers can read it, the names must be
identical; where they could disagree, poisonlab must refuse (issue 11, finding 1).
"""

from __future__ import annotations

import io
import tarfile

import pytest
from rawtar import GNU, header, long_name, member, pax, raw_tar

from poisonlab.pipelines.sample import Sample
from poisonlab.shards.tarformat import TarFormatError, TarRefusedError, iter_members
from poisonlab.shards.writer import ShardWriter


def _ours(data: bytes) -> list[tuple[str, str]]:
    stream = io.BufferedReader(io.BytesIO(data))
    return [(m.name, m.kind) for m in iter_members(stream, lambda name, kind, size: True)]


def _tarfiles(data: bytes) -> list[tuple[str, str]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|*") as tar:
        return [(i.name, "file" if i.isreg() else "dir" if i.isdir() else "other") for i in tar]


AGREED = {
    "plain": raw_tar(member("a.jpg", b"x" * 600), member("a.txt", b"cap")),
    "gnu magic with bytes in the prefix field": raw_tar(member("a.txt", b"x", magic=GNU, prefix=b"hidden")),
    "ustar prefix": raw_tar(member("b.txt", b"x", prefix=b"dir/sub")),
    "pax path with trailing slashes": raw_tar(pax({"path": "k.txt//"}), member("ignored.txt", b"cap")),
    "long name": raw_tar(long_name(b"d/" + b"n" * 150 + b".txt"), member("short.txt", b"cap", magic=GNU)),
    "empty directory and symlink": raw_tar(header("d/", 0, b"5"), header("l", 0, b"2", linkname=b"/etc"),
                                           member("a.txt", b"x")),
    "old-style directory without data": raw_tar(header("d/", 0, b"\x00"), member("a.txt", b"x")),
    "unknown type with data (skipped by both)": raw_tar(member("v", b"y" * 700, b"V"), member("a.txt", b"x")),
    "pax size": raw_tar(pax({"size": "3"}), header("a.txt", 999) + member("", b"abc")[512:]),
}


@pytest.mark.parametrize("name", list(AGREED))
def test_same_members_as_tarfile(name: str) -> None:
    data = AGREED[name]
    assert _ours(data) == _tarfiles(data)


REFUSED = {
    "directory with data": raw_tar(header("d/", 512, b"5"), member("x.pyd", b"")),
    "hard link with data": raw_tar(header("h", 512, b"1", linkname=b"a"), member("x.pyd", b"")),
    "pax global header": raw_tar(pax({"path": "x.pyd"}, b"g"), member("a.txt", b"x")),
    "pax GNU.sparse.name": raw_tar(pax({"GNU.sparse.name": "x.pyd"}), member("a.txt", b"x")),
    "pax hdrcharset": raw_tar(pax({"hdrcharset": "BINARY", "path": "x.txt"}), member("a.txt", b"x")),
    "GNU sparse member": raw_tar(member("x.pyd", b"x", b"S", magic=GNU)),
    "Solaris extended header": raw_tar(member("././@Pax", b"9 path=x\n", b"X"), member("a.txt", b"x")),
    "two pax headers for one member": raw_tar(pax({"path": "a.txt"}), pax({"path": "x.pyd"}), member("b", b"x")),
    "two long names for one member": raw_tar(long_name(b"a.txt"), long_name(b"x.pyd"), member("b", b"x", magic=GNU)),
    "long name and pax path": raw_tar(long_name(b"a.txt"), pax({"path": "x.pyd"}), member("b", b"x", magic=GNU)),
    "extended header then the end": raw_tar(member("a.txt", b"x"), pax({"path": "x.pyd"})),
    "mode that tarfile cannot parse": raw_tar(member("a.txt", b"x"), member("b.txt", b"x", mode=b"zz\x00\x00\x00\x00\x00\x00")),
    "long name over the cap": raw_tar(long_name(b"n" * 5000 + b".txt"), member("b", b"x", magic=GNU)),
    "data after the end": raw_tar(member("a.txt", b"x")) + member("x.pyd", b"x"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_constructs_readers_disagree_on_are_refused(name: str) -> None:
    with pytest.raises(TarRefusedError):
        _ours(REFUSED[name])


def test_negative_and_lying_sizes_are_errors() -> None:
    with pytest.raises(TarFormatError, match="negative"):
        _ours(raw_tar(header("a.txt", 0, size_field=b"\xff" + b"\xff" * 11)))
    lying = header("a.txt", 0, size_field=b"%011o\x00" % 1024) + member("b.txt", b"x")[512:] + member("c.txt", b"y")
    with pytest.raises(TarFormatError, match="bad header checksum"):
        _ours(raw_tar(lying))


def test_what_poisonlab_writes_is_plain(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The writer emits regular files only, which both readers see the same, long names included."""
    with ShardWriter(tmp_path, "00000") as writer:
        for key in ("a", "dir/" + "n" * 120, "ü/ñ"):
            writer.write(Sample(key=key, payload=b"\xff\xd8 not decoded", payload_ext="jpg", text="cap"))
        writer.close()
    data = (tmp_path / "00000.tar").read_bytes()
    assert _ours(data) == _tarfiles(data)
    assert {kind for _, kind in _ours(data)} == {"file"}
