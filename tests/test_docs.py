"""The documentation site builds with warnings as errors, and its pages hold what they are there for."""

import html
import re
import subprocess
import sys
from pathlib import Path

# The tests extra installs the docs extra, so the site is built by every test run: a missing package fails, not skips
import myst_parser  # noqa: F401
import sphinx  # noqa: F401
import sphinx_rtd_theme  # noqa: F401

from sb3_mpo import MPO

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _text(markup: str) -> str:
    """
    :param markup: HTML
    :return: Its text, tags removed, entities decoded and white space collapsed
    """
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", markup)).split())


def _param_description(docstring: str, name: str) -> str:
    """
    :param docstring: A reST docstring with ``:param name:`` fields
    :param name: The parameter
    :return: The first line of the parameter's description, without reST markup
    """
    match = re.search(rf":param {name}:\s*(.+)", docstring)
    assert match is not None, f"no :param {name}: in the docstring"
    return " ".join(match.group(1).replace("``", "").split())


def test_docs_build_without_warnings(tmp_path: Path) -> None:
    out = tmp_path / "html"
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-d", str(tmp_path / "doctrees")]
    build = subprocess.run([*command, str(DOCS), str(out)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, f"sphinx failed (warnings are errors):\n{build.stdout}\n{build.stderr}"

    # The MPO page's Parameters section is generated from MPO's docstring
    mpo_page = (out / "modules" / "mpo.html").read_text(encoding="utf-8")
    assert 'id="sb3_mpo.MPO"' in mpo_page
    parameters = _text(mpo_page[mpo_page.index('id="sb3_mpo.MPO"') :])
    assert MPO.__doc__ is not None
    for name in ("epsilon_mean", "n_action_samples"):
        # Sphinx joins a parameter's name and its description with an en dash
        assert f"{name} \u2013 {_param_description(MPO.__doc__, name)}" in parameters, name
    policies = ("MlpPolicy", "policies.MPOPolicy", "CnnPolicy", "MultiInputPolicy")
    for policy in (f"sb3_mpo.mpo.{name}" for name in policies):
        assert f'id="{policy}"' in mpo_page, policy

    # Every generated result page is built and reachable from the index's Results toctree
    index = (out / "index.html").read_text(encoding="utf-8")
    pages = sorted(DOCS.glob("results/*.md"))
    assert pages, "no result page under docs/results"
    for page in pages:
        assert (out / "results" / f"{page.stem}.html").is_file(), page.name
        assert f'href="results/{page.stem}.html"' in index, page.name


def _table_rows_of_another_width(text: str) -> list[str]:
    """
    :param text: Markdown
    :return: The rows of its pipe tables whose cell count differs from their header's (an unescaped ``|`` inside a
        cell splits it, and the renderer drops the extra cells without a warning)
    """
    odd, width = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            width = None
            continue
        cells = len(re.split(r"(?<!\\)\|", line.strip()))
        if width is None:
            width = cells
        elif cells != width:
            odd.append(line)
    return odd


def test_every_markdown_table_keeps_its_headers_width() -> None:
    assert _table_rows_of_another_width("| a | b |\n|---|---|\n| 1 | \\|x\\| |\n\n| c |\n|---|\n| 2 |") == []
    assert _table_rows_of_another_width("| a | gap |\n|---|---|\n| 1 | |x| |") == ["| 1 | |x| |"]
    pages = [DOCS.parent / "README.md", *sorted(DOCS.glob("*.md")), *sorted((DOCS / "results").glob("*.md"))]
    odd = {page.name: rows for page in pages if (rows := _table_rows_of_another_width(page.read_text()))}
    assert odd == {}
