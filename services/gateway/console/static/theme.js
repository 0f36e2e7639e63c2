// Flotilla console: applies the chosen colour theme before the page is
// drawn (no flash), and marks that scripts run (html.js).
(function () {
  "use strict";
  var root = document.documentElement;
  root.classList.add("js");
  try {
    var t = localStorage.getItem("flotilla-theme");
    if (t === "dark" || t === "light") {
      root.setAttribute("data-theme", t);
    }
  } catch (e) {
    // Storage may be off: the system's theme applies.
  }
})();
