"""The book's PDF (``instructedit-book`` prints it after the HTML build, ``instructedit_utils.publish.pdf``): it holds
every page of ``_toc.yml`` with their provenance footers, printed with the site's styles (no navigation, equations
typeset by MathJax, every figure on paper), and no blank page. Needs a built book, like the browser test:
``INSTRUCTEDIT_BOOK=_build/html`` (the PDF is ``_build/pdf/book.pdf`` beside it)."""
import os
import re
from pathlib import Path

import pytest
import yaml

from instructedit_utils.publish import pdf

ROOT = Path(__file__).resolve().parents[2]
BOOK = os.environ.get("INSTRUCTEDIT_BOOK")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not BOOK, reason="set INSTRUCTEDIT_BOOK=_build/html after building the book "
                                                  "(CI does: .ci/run)")]


def test_the_pdf_holds_every_page_and_no_blank_one():
    from pypdf import PdfReader

    html = Path(BOOK) if Path(BOOK).is_absolute() else ROOT / BOOK
    path = html.parent / "pdf" / pdf.PDF_FILE.name
    assert path.is_file(), f"no PDF at {path} (instructedit-book prints it after the HTML build)"
    pages, blank = pdf.blank_pages(path)
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    chapters = [c["file"] for part in toc["parts"] for c in part["chapters"] if "/executed/" in c["file"]]
    assert pages >= len(chapters) + 2, f"{pages} pages for {len(chapters)} chapters"
    assert not blank, f"blank pages {blank} of {pages}"
    text = "\n".join(p.extract_text() or "" for p in PdfReader(path).pages)
    for page in chapters:  # each chapter's title, as its executed notebook's first heading gives it
        nb = (ROOT / f"{page}.ipynb").read_text()
        title = re.search(r'"# ([^"\\]+)', nb)[1].strip()
        assert title.split(":")[0][:25] in text, f"{page}: its title {title!r} is not in the PDF"
    assert text.count("Provenance.") == len(chapters), "each chapter's provenance footer is printed once"
    # printed with the site's styles and scripts: no navigation, equations typeset, every figure on paper
    assert "Skip to main content" not in text, "the page was printed without its styles (navigation shows)"
    assert not re.search(r"\$\$|\\frac|\\texttt|\\mathbb", text), "equations were printed as raw TeX"
    printed = (html.parent / "singlehtml" / pdf.PRINTED_PAGE).read_text(encoding="utf-8")
    figures = len(re.findall(r'<img[^>]+src="_images/[^"]+\.png"', printed))
    images = sum(len(page.images) for page in PdfReader(path).pages)
    assert figures > 0 and images >= figures, f"{images} images in the PDF for {figures} figures of the book"
