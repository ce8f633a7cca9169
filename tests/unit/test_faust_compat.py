"""The Faust patches are pinned to the released source they replace, and applied once."""

from __future__ import annotations

from novaquota.streams import faust_compat

N = 60
TP = ("events", 0)


def test_each_patched_function_is_the_release_it_was_written_for() -> None:
    faust_compat.check_versions()
    for qualified, expected in faust_compat.PATCHED.items():
        assert faust_compat.source_hash(qualified) == expected, (
            f"{qualified} changed upstream: review its patch in streams/faust_compat.py"
        )


def test_install_patches_once_and_keeps_the_originals() -> None:
    from faust.transport.consumer import Consumer

    faust_compat.install(16 * 2**20)
    faust_compat.install(16 * 2**20)
    assert Consumer.on_buffer_full is faust_compat._on_buffer_full
    original = Consumer.on_buffer_full.__wrapped_original__  # type: ignore[attr-defined]
    assert original.__qualname__ == "Consumer.on_buffer_full"
    assert faust_compat._on_buffer_full.__wrapped_original__ is original  # not wrapped twice
