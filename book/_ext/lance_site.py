"""Site-wide settings of the lance book that _config.yml alone cannot express (a local Sphinx
extension, loaded through `sphinx: local_extensions` in _config.yml).

1. The publishing buttons follow ONE setting, `repository: url:` in _config.yml. Empty (the
   default): no repository, issues or launch buttons. Set (https://github.com/ORG/REPO): the
   repository and issues buttons, a Binder launch button and, for GitHub, a Colab launch button.
   A non-empty `launch_buttons: binderhub_url:` in _config.yml (another BinderHub) is kept.
2. The cell papermill injects (tag `injected-parameters`, source "# Parameters") is removed from
   the pages: myst-nb only knows the fixed tag `remove-cell` and has no option for other tags.
   The downloadable .ipynb keeps it, as the record of the parameters the book was run with.
3. Every notebook chapter can also be downloaded as a MyST Markdown notebook (.md, code without
   outputs, readable by Jupytext and Jupyter Book); it is listed beside the .ipynb download.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
from docutils import nodes

BINDER_URL = "https://mybinder.org"
COLAB_URL = "https://colab.research.google.com"
LAUNCH_KEYS = ("binderhub_url", "colab_url", "jupyterhub_url", "deepnote_url", "jupyterlite_url")
INJECTED_TAG = "injected-parameters"


def buttons_from_repository_url(app, config) -> None:
    # Jupyter Book fills in every key of html_theme_options with its defaults (False, ""), so
    # "not given" cannot be told from "off": a non-empty launch URL in _config.yml (another
    # BinderHub) is kept, everything else follows repository.url.
    opts = config.html_theme_options
    url = str(opts.get("repository_url") or "").strip().rstrip("/")
    launch = opts.setdefault("launch_buttons", {})
    if not url:
        # sphinx-book-theme cannot build launch links without a repository: keep them off
        for key in LAUNCH_KEYS:
            launch[key] = ""
        for key in ("use_repository_button", "use_issues_button", "use_edit_page_button"):
            opts[key] = False
        return
    opts["repository_url"] = url
    opts["use_repository_button"] = True
    opts["use_issues_button"] = True
    launch["binderhub_url"] = launch.get("binderhub_url") or BINDER_URL
    if "github.com" in url:  # Colab opens notebooks from GitHub only
        launch["colab_url"] = launch.get("colab_url") or COLAB_URL


def remove_injected_parameters(app, doctree) -> None:
    for node in list(doctree.findall(nodes.container)):
        if f"tag_{INJECTED_TAG}" in node.get("classes", []) and node.parent is not None:
            node.parent.remove(node)


def notebook_as_myst(nb) -> str:
    """The notebook as a MyST Markdown notebook (the text format of Jupytext and Jupyter Book)."""
    kernel = nb.metadata.get("kernelspec", {}) or {}
    lines = ["---", "jupytext:", "  text_representation:", "    extension: .md",
             "    format_name: myst", "kernelspec:",
             f"  display_name: {kernel.get('display_name', 'Python 3')}",
             f"  language: {kernel.get('language', 'python')}",
             f"  name: {kernel.get('name', 'python3')}", "---", ""]
    for cell in nb.cells:
        source = cell.source.rstrip("\n")
        if cell.cell_type == "markdown":
            lines += [source, ""]
            continue
        # a fence longer than any fence inside the cell
        fence = "`" * max([3] + [len(run) + 1 for run in re.findall(r"^\s*(`{3,})", source, re.M)])
        directive = "{code-cell} ipython3" if cell.cell_type == "code" else "{raw-cell}"
        lines.append(fence + directive)
        tags = cell.metadata.get("tags", [])
        if tags:
            lines.append(":tags: [" + ", ".join(tags) + "]")
            lines.append("")
        lines += [source, fence, ""]
    return "\n".join(lines)


def add_markdown_download(app, pagename, templatename, context, doctree) -> None:
    if app.builder.format != "html" or doctree is None:
        return
    source = Path(app.env.doc2path(pagename))
    group = next((b for b in context.get("header_buttons", []) if b.get("label") == "download-buttons"), None)
    if source.suffix != ".ipynb" or group is None:
        return
    target = Path(app.outdir, "_sources", pagename + ".md")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(notebook_as_myst(nbformat.read(source, as_version=4)), encoding="utf-8")
    group["buttons"].insert(1, {
        "type": "link",
        "url": f"{context['pathto']('_sources', 1)}/{pagename}.md",
        "text": ".md",
        "tooltip": "Download as a MyST Markdown notebook",
        "icon": "fab fa-markdown",
        "label": "download-myst-button",
    })


def setup(app):
    app.connect("config-inited", buttons_from_repository_url)
    app.connect("doctree-read", remove_injected_parameters)
    # after sphinx-book-theme's header buttons (priority 501)
    app.connect("html-page-context", add_markdown_download, priority=510)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
