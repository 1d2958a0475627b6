"""The key alphabet (issue 11, finding 6, key part): what a key may hold, and one spelling per key."""

from __future__ import annotations

import tarfile

import pytest

from poisonlab.pipelines.sample import Sample
from poisonlab.shards.keys import canonical_name, display_key, unsafe_name
from poisonlab.shards.reader import read_shard
from poisonlab.shards.writer import ShardWriter


@pytest.mark.parametrize("char", ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068",
                                  "\u2069", "\u200e", "\u200f"])
def test_bidi_controls_are_refused(char: str) -> None:
    assert unsafe_name(f"abc{char}gpj.exe") == "bidirectional control character"


@pytest.mark.parametrize("char", ["\x00", "\x1b", "\x7f", "\x85", "\x9b"])
def test_c0_c1_controls_and_del_are_refused(char: str) -> None:
    assert unsafe_name(f"a{char}b.jpg") == "control character"


@pytest.mark.parametrize(("name", "why"), [
    ("\udcff.jpg", "not valid UTF-8"), ("a\u200bb.jpg", "non-printable character U+200B"),
    ("a\u2028b", "non-printable character U+2028"), ("", "empty name"), ("..", "parent directory"),
    ("a/../b.jpg", "parent directory"), ("a/./b.jpg", "dot segment"), ("a//b.jpg", "empty path segment"),
    ("/etc/passwd", "absolute path"), ("c:x.jpg", "absolute path"), ("./k.jpg", "dot segment"),
    ("é" * 1001, "longer than 1000 characters"),
])
def test_other_unsafe_names(name: str, why: str) -> None:
    assert unsafe_name(name) == why


@pytest.mark.parametrize("name", ["000001.jpg", "dir/sub/k.json", "ünïcödé/名前.txt", "a b.txt", "k-1_2+3=(x).png"])
def test_safe_names(name: str) -> None:
    assert unsafe_name(name) is None


def test_dot_slash_is_the_same_key() -> None:
    assert canonical_name("./k.jpg") == canonical_name("././k.jpg") == "k.jpg"
    assert canonical_name("a/./k.jpg") == "a/./k.jpg"  # only the leading form is rewritten; the rest is refused


def test_display_key_escapes_only_what_is_unsafe() -> None:
    assert display_key("ab\u202ec\x85é") == "ab\\u202ec\\x85é"
    assert display_key("plain/ключ") == "plain/ключ"


def test_the_writer_refuses_keys_outside_the_alphabet(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with ShardWriter(tmp_path, "00000") as writer:
        for key in ("./k", "k\u202e1", "k\x85", "k", "ü" * 1001):
            writer.write(Sample(key=key, payload=b"x", payload_ext="bin", text="caption"))
        stats = writer.close()
    assert stats.written == 1
    with tarfile.open(tmp_path / "00000.tar") as tar:
        assert tar.getnames() == ["k.bin", "k.txt", "k.json"]
    refused = {s.key for s in read_shard(tmp_path, "00000") if "invalid_key" in (s.reason or "")}
    assert refused == {"./k", "k\\u202e1", "k\\x85", "ü" * 1001}  # escaped in the sidecar, never raw
