// Renders the math that pymdownx.arithmatex (generic mode) leaves as \( … \) and \[ … \]
// with the KaTeX copy bundled in docs/js/katex (no network).
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll(".arithmatex").forEach(function (element) {
    renderMathInElement(element, {
      delimiters: [
        { left: "\\[", right: "\\]", display: true },
        { left: "\\(", right: "\\)", display: false }
      ],
      throwOnError: false
    });
  });
});
