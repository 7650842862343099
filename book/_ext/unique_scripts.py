"""Sphinx extension: each page's scripts once.

Jupyter Book 1.x's build emits ``env-before-read-docs`` twice, so sphinx-thebe and sphinx-togglebutton add their
inline configuration scripts twice; sphinx-thebe's declares ``const THEBE_JS_URL``, and its second copy is a
JavaScript error on every page ("Identifier 'THEBE_JS_URL' has already been declared"), which the browser test
(tests/book/test_browser.py) catches. This drops exact repeats (same file or body and attributes, whatever the
priority) from each page.
"""


def _key(script):
    """File and attributes (an inline script's body is an attribute), not the priority: a repeat may differ in it."""
    return str(script.filename or ""), tuple(sorted((k, str(v)) for k, v in script.attributes.items()))


def unique_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for script in scripts:
        key = _key(script)
        if key not in seen:
            seen.add(key)
            kept.append(script)
    scripts[:] = kept


def setup(app):
    # early: html-page-context stops at the first handler that returns a template name
    app.connect("html-page-context", unique_scripts, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
