// Feature browser index: a searchable, sortable table of latents from window.VSL_INDEX (data/index.js).
(function () {
  "use strict";
  var data = window.VSL_INDEX;
  var tbody = document.querySelector("#latents tbody");
  var search = document.getElementById("search");
  var hideDead = document.getElementById("hide-dead");
  var count = document.getElementById("count");
  var sortKey = "id", sortDir = 1;
  var MAX_ROWS = 1000;

  function fmt(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return "";
    if (typeof v !== "number") return String(v);
    if (v !== 0 && Math.abs(v) < 1e-3) return v.toExponential(1);
    return v.toFixed(digits);
  }

  function summary() {
    var ul = document.getElementById("summary");
    Object.keys(data.summary).forEach(function (key) {
      var li = document.createElement("li");
      var v = data.summary[key];
      li.innerHTML = key.replace(/_/g, " ") + ": <b>" + (typeof v === "number" ? fmt(v, Number.isInteger(v) ? 0 : 3) : v) + "</b>";
      ul.appendChild(li);
    });
  }

  function cell(tr, text, cls) {
    var td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function render() {
    var q = search.value.trim().toLowerCase();
    var rows = data.latents.filter(function (r) {
      if (hideDead.checked && r.flag === "dead") return false;
      if (!q) return true;
      return String(r.id) === q || String(r.id).indexOf(q) === 0 || (r.label || "").toLowerCase().indexOf(q) >= 0;
    });
    rows.sort(function (a, b) {
      var x = a[sortKey], y = b[sortKey];
      if (x === y) return a.id - b.id;
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : 1) * sortDir;
    });
    tbody.textContent = "";
    rows.slice(0, MAX_ROWS).forEach(function (r) {
      var tr = document.createElement("tr");
      var td = cell(tr, "");
      if (r.page) {
        var a = document.createElement("a");
        a.href = r.page;
        a.textContent = r.id;
        a.className = "latent-link";
        td.appendChild(a);
      } else {
        td.textContent = r.id;
      }
      cell(tr, fmt(r.freq, 4));
      cell(tr, fmt(r.img_freq, 3));
      cell(tr, fmt(r.mean_active, 3));
      cell(tr, fmt(r.max, 3));
      cell(tr, r.label || "");
      cell(tr, fmt(r.precision, 2));
      cell(tr, fmt(r.recall, 2));
      cell(tr, r.flag || "", r.flag ? "flag-" + r.flag : "");
      tbody.appendChild(tr);
    });
    count.textContent = "showing " + Math.min(rows.length, MAX_ROWS) + " of " + rows.length + " latents";
  }

  document.querySelectorAll("#latents th").forEach(function (th) {
    th.addEventListener("click", function () {
      var key = th.getAttribute("data-key");
      sortDir = key === sortKey ? -sortDir : (th.getAttribute("data-type") === "num" && key !== "id" ? -1 : 1);
      sortKey = key;
      document.querySelectorAll("#latents th").forEach(function (h) { h.className = ""; });
      th.className = sortDir > 0 ? "asc" : "desc";
      render();
    });
  });
  search.addEventListener("input", render);
  hideDead.addEventListener("change", render);
  summary();
  render();
})();
