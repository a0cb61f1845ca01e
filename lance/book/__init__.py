"""The book's rendering layer: result files into tables, figures and numbers for the text.

- :mod:`lance.book.render`: one table style, one figure style, and the glue helpers;
- :mod:`lance.book.tables`: the result files beside the paper's numbers, as tables;
- :mod:`lance.book.figures`: the book's figures;
- :mod:`lance.book.glance`: the front page's results at a glance.

Nothing below this package imports it: the algorithms and the experiments do not depend on
how the book shows them.
"""

from lance.book import figures, render, tables

__all__ = ["figures", "render", "tables"]
