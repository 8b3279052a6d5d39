"""The documentation against the code: every option documented, the tables' columns, and every
relative link (and its #anchor) leading somewhere."""

from __future__ import annotations

import argparse
import os
import re

import pytest

from transforms.tables import CAPTIONS_SCHEMA, CLIPS_SCHEMA, FAILURES_SCHEMA, VIDEOS_SCHEMA

ROOT = os.path.join(os.path.dirname(__file__), "..")
PAGES = ["README.md", "BENCHMARKS.md", *(os.path.join("docs", n) for n in sorted(os.listdir(os.path.join(ROOT, "docs")))
                                        if n.endswith(".md"))]


def _read(page: str) -> str:
    return open(os.path.join(ROOT, page), encoding="utf-8").read()


def test_the_extraction_page_documents_every_option():
    from pipeline.options import ExtractOptions, IOOptions, ModelOptions

    parser = argparse.ArgumentParser()
    for cls in (IOOptions, ExtractOptions, ModelOptions):
        cls._add_argparse_args(parser)
    flags = [s for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"]
    page = _read("docs/extraction.md")
    missing = [f for f in flags if f"`{f}`" not in page and f"`{f} " not in page and f"{f}`" not in page]
    assert len(flags) > 20 and missing == []


def test_the_readme_lists_exactly_the_columns_of_each_table():
    readme = _read("README.md")
    schemas = {"clips": CLIPS_SCHEMA, "videos": VIDEOS_SCHEMA, "failures": FAILURES_SCHEMA,
               "captions": CAPTIONS_SCHEMA}
    for table, schema in schemas.items():
        row = re.search(rf"^\| `{table}` \| (.*) \|$", readme, re.M)
        assert row, f"README has no row for the {table} table"
        # Column names are the backticked words outside parentheses (those hold values and notes).
        documented = re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", row.group(1)))
        assert documented == schema.names, table


def _anchors(text: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    found = set()
    for title in re.findall(r"^#+ (.*)$", re.sub(r"```.*?```", "", text, flags=re.S), re.M):
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_leads_somewhere(page):
    text = _read(page)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    for link in links:
        if re.match(r"^[a-z]+:", link):
            continue  # a web address
        target, _, anchor = link.partition("#")
        path = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), target)) if target else os.path.join(ROOT, page)
        assert os.path.exists(path), f"{page}: {link} leads nowhere"
        if anchor and path.endswith(".md"):
            assert anchor in _anchors(open(path, encoding="utf-8").read()), f"{page}: no heading for #{anchor} in {target or page}"
