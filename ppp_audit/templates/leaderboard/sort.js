{#- The leaderboard's sort (leaderboard/page.html includes it inline: the page's CSP allows no script file). A click
    on a header button (or Enter on it) sorts the rows by that column, empty cells last; the rank column and text
    columns sort ascending first, numbers descending. -#}
(function () {
  var table = document.getElementById("leaderboard"), heads = table.tHead.rows[table.tHead.rows.length - 1].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    th.querySelector("button").addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var numeric = th.getAttribute("data-kind") === "num", state = th.getAttribute("aria-sort");
      var down = state ? state === "ascending" : th.getAttribute("data-first") === "descending";
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", down ? "descending" : "ascending");
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute("data-value"), y = b.cells[col].getAttribute("data-value");
        if (x === "" || y === "") { return (x === "") - (y === ""); }
        var order = numeric ? Number(x) - Number(y) : x.localeCompare(y);
        return down ? -order : order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
  document.documentElement.setAttribute("data-sortable", "1");
})();
