"""The docs site builds with warnings as errors, and every ```python block of every page runs.

Blocks of one page run in order in one fresh subprocess (sharing a namespace), with a
temporary directory as the working directory, so pages cannot depend on each other or on the
repository layout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
_BLOCK = re.compile(r"^([ \t]*)```python[^\n]*\n(.*?)^\1```[ \t]*$", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[str]:
    """The ```python fenced blocks of a Markdown text, dedented, in order."""
    return [textwrap.dedent(match.group(2)) for match in _BLOCK.finditer(text)]


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md")) if DOCS.is_dir() else []


def _needs_model(text: str) -> bool:
    return "load_embedded_model" in text or "embedded" in text and "LLMPlant" in text


def test_block_extraction_oracle():
    text = "a\n```python\nx = 1\n```\nb\n```bash\nls\n```\n  ```python\n  y = x + 1\n  ```\n"
    assert python_blocks(text) == ["x = 1\n", "y = x + 1\n"]


def test_mkdocs_build_strict(tmp_path):
    if shutil.which("mkdocs") is None:
        pytest.skip("mkdocs is not installed")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
         "-d", str(site)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (site / "index.html").is_file()
    assert (site / "api" / "index.html").is_file()
    assert_offline_site(site)


_EXTERNAL_RESOURCE = re.compile(
    r"""<(?:script|img|iframe)\b[^>]*\bsrc\s*=\s*["']?(?:https?:)?//"""
    r"""|<link\b[^>]*\bhref\s*=\s*["']?(?:https?:)?//"""
    r"""|@import\s+(?:url\()?["']?(?:https?:)?//"""
    r"""|url\(\s*["']?(?:https?:)?//""", re.IGNORECASE)


def external_resources(html: str) -> list[str]:
    """Every script, stylesheet, image, frame or CSS url that a page loads from the network."""
    return [m.group(0) for m in _EXTERNAL_RESOURCE.finditer(html)]


def test_external_resource_oracle():
    assert external_resources('<script src="https://cdn.x/mathjax.js"></script>')
    assert external_resources("<link rel='stylesheet' href='//fonts.example/css'>")
    assert external_resources("body { background: url(https://x/y.png) }")
    assert not external_resources('<script src="js/katex/katex.min.js"></script>'
                                  '<a href="https://example.org">a link is not a resource</a>')


def assert_offline_site(site: Path) -> None:
    """The built site loads nothing from the network, and its math renderer is bundled."""
    offenders = {}
    for page in list(site.rglob("*.html")) + list(site.rglob("*.css")):
        found = external_resources(page.read_text(encoding="utf-8", errors="replace"))
        if found:
            offenders[str(page.relative_to(site))] = found[:3]
    assert not offenders, offenders
    concepts = (site / "concepts" / "index.html").read_text(encoding="utf-8")
    assert 'class="arithmatex"' in concepts, "the concepts page shows equations"
    for script in ("js/katex/katex.min.js", "js/katex/contrib/auto-render.min.js",
                   "js/katex-render.js"):
        assert script in concepts, script
        assert (site / script).is_file(), script
    fonts = list((site / "js" / "katex" / "fonts").glob("*.woff2"))
    assert fonts, "KaTeX's fonts are bundled"


@pytest.mark.parametrize(
    "page", [pytest.param(p, id=str(p.relative_to(DOCS)),
                          marks=[pytest.mark.slow] if _needs_model(p.read_text()) else [])
             for p in _pages() if python_blocks(p.read_text(encoding="utf-8"))])
def test_page_code_blocks_run(page, tmp_path):
    _run_blocks(python_blocks(page.read_text(encoding="utf-8")), str(page.relative_to(DOCS)),
                tmp_path)


@pytest.mark.slow
def test_readme_code_blocks_run(tmp_path):
    readme = ROOT / "README.md"
    blocks = python_blocks(readme.read_text(encoding="utf-8"))
    assert len(blocks) >= 2, "the README shows an LQR and a steering example"
    _run_blocks(blocks, "README.md", tmp_path)


def _run_blocks(blocks: list[str], name: str, tmp_path) -> None:
    """Run ``blocks`` in order as one script in a fresh interpreter, cwd a temp dir."""
    script = "\n\n".join(f"# --- block {i + 1} of {name}\n{b}" for i, b in enumerate(blocks))
    path = tmp_path / "page_blocks.py"
    path.write_text(script, encoding="utf-8")
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "TQDM_DISABLE": "1"}
    work = tmp_path / "cwd"
    work.mkdir()
    result = subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                            cwd=work, env=env, timeout=900)
    assert result.returncode == 0, f"{name}: code blocks failed\n{result.stderr[-4000:]}"