"""Nothing in README.md escapes the README test silently: every fenced block names its
language, every shell block says whether ``tests/integration/test_readme.py`` runs it
(```` ```bash tested ```` or ```` ```bash untested ````), and the tested blocks are the
walkthrough and more, never anything that would stop a shared broker or install software."""

from __future__ import annotations

import re

from tests.support.readme import MARKS, README, blocks, blocks_marked_tested, shell_blocks

TEXT = README.read_text(encoding="utf-8")


def test_readme_has_tested_shell_blocks() -> None:
    tested = blocks_marked_tested(TEXT)
    assert len(tested) >= 7, f"only {len(tested)} tested blocks in README.md"
    # the walkthrough: quota, check, VMs, violation, resolution, audit
    text = "\n".join(b.body for b in tested)
    for needle in (
        "novaquota worker",
        "novaquota projections run",
        "/api/v1/quotas?wait=",
        "/api/v1/quotas/check",
        '"type": "vm.created"',
        '"type": "vm.deleted"',
        "over_limit",
        "/api/v1/audit",
    ):
        assert needle in text, f"no tested README block contains {needle!r}"


def test_every_shell_block_is_marked_tested_or_untested() -> None:
    unmarked = [b.where() for b in shell_blocks(TEXT) if b.mark not in MARKS]
    assert not unmarked, (
        "shell blocks in README.md without `tested` or `untested` after the language "
        f"(e.g. ```bash tested): {unmarked}"
    )


def test_every_fenced_block_names_its_language() -> None:
    bare = [b.where() for b in blocks(TEXT) if not b.lang]
    assert not bare, f"fenced blocks in README.md without a language (```text, ```json, …): {bare}"


def test_only_shell_blocks_carry_a_test_mark() -> None:
    odd = [f"{b.where()} ({b.lang} {b.mark})" for b in blocks(TEXT) if b.mark and not b.shell]
    assert not odd, f"a test mark on a block that is not shell: {odd}"


def test_tested_blocks_never_stop_the_broker_or_install() -> None:
    forbidden = re.compile(
        r"novaquota\s+kafka\s+stop|make\s+\w+|pip\s+install|apt-get|kubectl|docker|pkill|killall"
    )
    for b in blocks_marked_tested(TEXT):
        hit = forbidden.search(b.body)
        assert hit is None, f"{b.where()}: {hit.group(0)!r} must not run in the README test"


def test_tested_blocks_use_the_configurable_ports() -> None:
    """The test moves the ports with NOVAQUOTA_WEB_PORT / NOVAQUOTA_PROJECTIONS_WEB_PORT; a fixed
    6066 or 6067 in a tested command would reach another deployment."""
    for b in blocks_marked_tested(TEXT):
        for line in b.body.splitlines():
            command = line.split("#", 1)[0] if not line.lstrip().startswith("#") else ""
            fixed = re.search(r"(?<![-:])\b606[67]\b", command)
            assert fixed is None, f"{b.where()}: a fixed port in {line.strip()!r}"


def test_block_parser_reads_marks_languages_and_indented_fences() -> None:
    text = (
        "intro\n```bash tested\necho a\n```\n\n- item\n\n  ```sh untested\n  make test\n  ```\n\n"
        "```json\n{}\n```\n```\nplain\n```\n"
    )
    found = blocks(text)
    assert [(b.lang, b.mark, b.line) for b in found] == [
        ("bash", "tested", 2),
        ("sh", "untested", 8),
        ("json", "", 12),
        ("", "", 15),
    ]
    assert [b.body for b in blocks_marked_tested(text)] == ["echo a\n"]
