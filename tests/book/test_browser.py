"""The built book as a reader sees it, in headless Chromium: every page of ``_toc.yml`` loads without JavaScript
errors, each chapter shows its figures (decoded, non-zero size) and tables, no page shows an error output, a
traceback or a machine path, MathJax typesets the equations from the vendored copy (no request leaves the machine),
internal links resolve, and every chapter ends with its provenance footer, whose downloads (the chapter's summary
tables as CSV, the archive of every run's summaries on the results page) resolve to files that read as CSV and zip.
Screenshots of the intro and the results page go to ``_build/screenshots/``.

The book must be built first; ``INSTRUCTEDIT_BOOK`` names its HTML folder (CI sets ``_build/html`` after
``instructedit-book --profile ci``). Without it the test is skipped, saying so.
"""
import json
import os
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml

from browser import Browser
from instructedit_utils.publish.pdf import find_chromium

ROOT = Path(__file__).resolve().parents[2]
BOOK = os.environ.get("INSTRUCTEDIT_BOOK")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not BOOK, reason="set INSTRUCTEDIT_BOOK=_build/html after building the book "
                                                  "(CI does: .ci/run)")]
LOCAL_SCHEMES = {"file", "data", "blob", "about"}
ERROR_OUTPUTS = ".cell_output .output.traceback, .cell_output .output.error, .cell_output .output.stderr"
PAGE_FACTS = """JSON.stringify((() => {
  const main = document.querySelector('main') || document.body;
  return {
    images: [...main.querySelectorAll('img')].map(i => ({src: i.getAttribute('src'), w: i.naturalWidth,
                                                         h: i.naturalHeight, done: i.complete})),
    tables: main.querySelectorAll('table').length,
    errors: [...document.querySelectorAll('%s')].map(e => e.innerText.slice(0, 300)),
    text: main.innerText,
    math: main.querySelectorAll('.math').length,
    typeset: main.querySelectorAll('mjx-container').length,
    math_errors: main.querySelectorAll('mjx-merror').length,
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
    provenance: [...document.querySelectorAll('.provenance')].map(e => e.innerText),
    downloads: [...document.querySelectorAll('.provenance a.download')].map(a => a.href),
  };
})())""" % ERROR_OUTPUTS


def toc_pages() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]


@pytest.fixture(scope="module")
def html() -> Path:
    path = Path(BOOK) if Path(BOOK).is_absolute() else ROOT / BOOK
    if not (path / "index.html").is_file():
        pytest.fail(f"INSTRUCTEDIT_BOOK={BOOK}: no built book there (run instructedit-book first)")
    return path


@pytest.fixture(scope="module")
def pages(html):
    """Every page of the table of contents, opened in Chromium: its facts, requests and JavaScript exceptions."""
    exe = find_chromium()
    if exe is None:
        pytest.fail("Chromium not found: install Debian's chromium (bash .ci/setup installs it when it can)")
    out = {}
    with Browser(exe) as browser:
        for page in toc_pages():
            file = html / f"{page}.html"
            assert file.is_file(), f"{page} is in _toc.yml but the build has no {file.name}"
            browser.open(file.as_uri())
            facts = json.loads(browser.evaluate(PAGE_FACTS))
            facts.update(requests=browser.requests(), exceptions=browser.exceptions(), file=file)
            if page in ("book/intro", "book/executed/09_results"):
                shot = browser.screenshot(html.parent / "screenshots" / f"{Path(page).name}.png")
                facts["screenshot"] = shot
            out[page] = facts
    return out


def test_every_page_loads_without_errors_or_machine_paths(pages):
    for page, f in pages.items():
        assert not f["exceptions"], f"{page}: JavaScript exceptions {f['exceptions']}"
        assert not f["errors"], f"{page}: error outputs on the page: {f['errors']}"
        assert "Traceback (most recent call last)" not in f["text"], f"{page} shows a traceback"
        assert len(f["text"]) > 500, f"{page} is (nearly) empty"
        leaked = re.findall(r"(?:/home/|/root/|/tmp/|/work/)\S+", f["text"])
        assert not leaked, f"{page} shows machine paths: {leaked[:3]}"
        assert "it/s]" not in f["text"], f"{page} shows progress bars"


def test_chapters_show_their_figures_and_tables(pages):
    for page, f in pages.items():
        if "/executed/0" not in page or page.endswith("10_cost"):
            continue
        assert f["images"], f"{page} has no figure"
        broken = [i["src"] for i in f["images"] if not (i["done"] and i["w"] > 0 and i["h"] > 0)]
        assert not broken, f"{page}: images not decoded: {broken}"
        assert f["tables"] > 0, f"{page} has no table"
    assert pages["book/executed/10_cost"]["tables"] > 0, "the cost page shows no table"


def test_mathjax_typesets_offline(pages):
    with_math = {p: f for p, f in pages.items() if f["math"]}
    assert "book/intro" in with_math and "book/executed/02_editor_training" in with_math
    for page, f in with_math.items():
        assert f["typeset"] >= f["math"] and not f["math_errors"], \
            f"{page}: {f['math']} equations, {f['typeset']} typeset, {f['math_errors']} MathJax errors"
    for page, f in pages.items():
        remote = [u for u in f["requests"] if urlparse(u).scheme not in LOCAL_SCHEMES]
        assert not remote, f"{page} requested {remote[:3]}"
        vendored = [u for u in f["requests"]
                    if u.startswith("file:") and urlparse(u).path.endswith("/mathjax/tex-chtml.js")]
        assert vendored or not f["math"], f"{page}: MathJax was not loaded from the vendored copy"


def test_internal_links_resolve(pages):
    checked, broken = set(), []
    for page, f in pages.items():
        for href in f["links"]:
            url = urlparse(href)
            if url.scheme != "file" or (url.path, url.fragment) in checked:
                continue
            checked.add((url.path, url.fragment))
            target = Path(unquote(url.path))
            if not target.exists():
                broken.append(f"{page} -> {target.name}")
            elif url.fragment and target.suffix == ".html" and \
                    f'id="{url.fragment}"' not in target.read_text(encoding="utf-8", errors="replace"):
                broken.append(f"{page} -> {target.name}#{url.fragment}")
    assert checked and not broken, f"broken internal links: {broken[:10]}"


def test_screenshots_of_the_intro_and_the_results_page(pages):
    from PIL import Image

    for page in ("book/intro", "book/executed/09_results"):
        shot = pages[page]["screenshot"]
        with Image.open(shot) as img:
            assert img.width >= 1000 and img.height >= 1000, (shot, img.size)
            shades = img.convert("L").resize((64, 64)).getcolors(maxcolors=4096) or []
            assert len(shades) > 10, f"{shot} is blank"


def test_every_chapter_ends_with_its_provenance_and_downloads_that_resolve(pages):
    import csv
    import zipfile

    chapters = {p: f for p, f in pages.items() if "/executed/" in p}
    assert len(chapters) == len([p for p in toc_pages() if "/executed/" in p])
    for page, f in chapters.items():
        assert len(f["provenance"]) == 1, f"{page}: {len(f['provenance'])} provenance footers"
        footer = f["provenance"][0]
        for fact in ("Provenance.", "profile", "at commit", "started", " min (", "run folder"):
            assert fact in footer, f"{page}: the provenance footer lacks {fact!r}: {footer[:300]}"
        targets = [Path(unquote(urlparse(href).path)) for href in f["downloads"]]
        if not page.endswith("10_cost"):  # the cost page reads the others' cost records and writes no table
            assert targets, f"{page}: no download in its footer"
        for target in targets:
            assert target.is_file() and target.stat().st_size > 0, f"{page}: download {target.name} does not resolve"
            if target.suffix == ".csv":
                with target.open(newline="", encoding="utf-8") as fh:
                    header = next(csv.reader(fh))
                assert len(header) >= 2, f"{page}: {target.name} does not read as a table"
            else:
                with zipfile.ZipFile(target) as archive:
                    assert any(n.endswith(".csv") for n in archive.namelist()), f"{target.name} holds no table"
    assert any(t.endswith(".zip") for t in pages["book/executed/09_results"]["downloads"]), \
        "the results page does not link the archive of the runs' summaries"
