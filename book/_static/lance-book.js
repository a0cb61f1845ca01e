// lance-book: a click on a figure in the article shows it at full size; a click or Esc closes it.
document.addEventListener("DOMContentLoaded", () => {
  const selector = "article.bd-article .cell_output img, article.bd-article figure img";
  let overlay = null;
  const close = () => { if (overlay) { overlay.remove(); overlay = null; } };
  document.addEventListener("click", (event) => {
    const img = event.target.closest(selector);
    if (overlay) { close(); return; }
    if (!img || img.closest("a")) return;  // images that are links keep their link
    overlay = document.createElement("div");
    overlay.className = "lance-zoom";
    const big = document.createElement("img");
    big.src = img.currentSrc || img.src;
    big.alt = img.alt || "";
    overlay.appendChild(big);
    document.body.appendChild(overlay);
  });
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") close(); });
});
