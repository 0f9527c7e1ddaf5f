"""The README is a user's guide: at most 15 KB, the two set-up commands, no commit hashes (those live in
docs/results.md and bench/README.md, with the machine), and every page it or the docs link to exists."""

from __future__ import annotations

import re

from conftest import REPO

HASH = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b")


def test_the_readme_is_a_short_guide_with_the_two_set_up_commands():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.encode()) <= 15 * 1024
    setup = text.split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"```bash\n(.*?)\n```", setup, re.S) == ["make demo", "make test"]


def test_no_commit_hash_in_the_readme_or_the_configs():
    files = [REPO / "README.md", *sorted((REPO / "configs").rglob("*.yaml"))]
    found = {str(f.relative_to(REPO)): HASH.findall(f.read_text(encoding="utf-8")) for f in files}
    assert not {name: hashes for name, hashes in found.items() if hashes}
    assert HASH.findall("measured at 8fec916 and 399ea4e") == ["8fec916", "399ea4e"]  # the check can fail


def test_every_linked_page_exists():
    pages = [REPO / "README.md", REPO / "CONTRIBUTING.md", REPO / "bench" / "README.md", *(REPO / "docs").glob("*.md")]
    missing = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#:]+\.md)\)", page.read_text(encoding="utf-8")):
            if not (page.parent / target).resolve().is_file():
                missing.append(f"{page.relative_to(REPO)} -> {target}")
    assert not missing


def test_the_readme_documents_tracking_and_installing_the_wheel():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert "--report_to trackio" in text and "trackio show" in text
    assert "pip wheel --no-deps . -w dist" in text and "rlhf-recipes init" in text
    assert "report_to: trackio" in (REPO / "docs" / "data.md").read_text(encoding="utf-8")
