"""The book as one PDF, built offline: Jupyter Book's ``singlehtml`` builder puts every page of ``_toc.yml`` into one
HTML page, which the local headless Chromium prints (MathJax from the vendored copy, figures embedded). Checked for
its page count and for blank pages (a page with neither text nor an image).

Jupyter Book's own ``pdfhtml`` builder would do the same through pyppeteer, which downloads its own Chromium at
run time; nothing may be downloaded here, so the Chromium that ``.ci/setup`` installs prints instead.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

PDF_FILE = Path("_build") / "pdf" / "book.pdf"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PRINTED_PAGE = "print.html"  # beside the singlehtml build's _static/ and _images/
#: time the page gets to typeset its equations and decode its figures before it is printed (virtual milliseconds)
SETTLE_MS = 30000


def find_chromium() -> str | None:
    """The local Chromium (Debian's ``chromium`` first), or None."""
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


def print_pdf(root: Path) -> Path:
    """Chromium prints the ``singlehtml`` build of the book (built beforehand: ``runner.build_book(root,
    builder="singlehtml")``) to ``_build/pdf/book.pdf``; returns its path. Raises when Chromium is missing or prints
    nothing."""
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("no Chromium to print the book with: install Debian's chromium (bash .ci/setup does)")
    start = yaml.safe_load((root / "_toc.yml").read_text())["root"]
    # the one page is written at the root document's path (book/intro.html) but links its styles, scripts, figures
    # and MathJax relative to the build's top folder: printed there, it finds them
    built = root / "_build" / "singlehtml"
    page = built / PRINTED_PAGE
    page.write_text((built / f"{start}.html").read_text(encoding="utf-8"), encoding="utf-8")
    out = root / PDF_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-pdf-header-footer",
                    f"--virtual-time-budget={SETTLE_MS}", f"--print-to-pdf={out}", page.as_uri()],
                   check=True, capture_output=True, timeout=900)
    if not out.is_file() or out.stat().st_size == 0:
        raise FileNotFoundError(f"Chromium printed no PDF from {page.name}")
    return out


def blank_pages(path: Path) -> tuple[int, list[int]]:
    """(pages, the 1-based numbers of blank pages: neither extractable text nor an image) of a PDF."""
    from pypdf import PdfReader

    reader = PdfReader(path)
    blank = [i + 1 for i, page in enumerate(reader.pages)
             if not (page.extract_text() or "").strip() and not page.images]
    return len(reader.pages), blank
