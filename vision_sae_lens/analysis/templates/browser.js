// Feature browser index: a searchable, sortable, paged table of latents from window.VSL_INDEX (data/index.js).
(function () {
  "use strict";
  var data = window.VSL_INDEX;
  var tbody = document.querySelector("#latents tbody");
  var search = document.getElementById("search");
  var hideDead = document.getElementById("hide-dead");
  var count = document.getElementById("count");
  var prevBtn = document.getElementById("prev-page");
  var nextBtn = document.getElementById("next-page");
  var pageInfo = document.getElementById("page-info");
  var sortKey = "score", sortDir = -1;
  var PAGE_ROWS = 200, page = 0;

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
      var b = document.createElement("b");
      b.textContent = typeof v === "number" ? fmt(v, Number.isInteger(v) ? 0 : 3) : String(v);
      li.appendChild(document.createTextNode(key.replace(/_/g, " ") + ": "));
      li.appendChild(b);
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
      if (String(r.id) === q || String(r.id).indexOf(q) === 0) return true;
      // Full text over the name (and "weak" for a weak one), the best label, every label it fires on, the flag.
      var text = ((r.name || "") + " " + (r.weak ? "weak" : "") + " " + (r.label || "") + " " + (r.labels || "") +
        " " + (r.flag || "")).toLowerCase();
      return q.split(/\s+/).every(function (w) { return text.indexOf(w) >= 0; });
    });
    rows.sort(function (a, b) {
      var x = a[sortKey], y = b[sortKey];
      if (x === y) return a.id - b.id;
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : 1) * sortDir;
    });
    tbody.textContent = "";
    var pages = Math.max(1, Math.ceil(rows.length / PAGE_ROWS));
    page = Math.min(page, pages - 1);
    rows.slice(page * PAGE_ROWS, (page + 1) * PAGE_ROWS).forEach(function (r) {
      var tr = document.createElement("tr");
      var td = cell(tr, "");
      if (r.thumb) {
        var img = document.createElement("img");
        img.src = r.thumb;
        img.className = "thumb";
        img.alt = "";
        td.appendChild(img);
      }
      if (r.page) {
        var a = document.createElement("a");
        a.href = r.page;
        a.textContent = r.id;
        a.className = "latent-link";
        td.appendChild(a);
      } else {
        td.appendChild(document.createTextNode(r.id));
      }
      if (data.names) {
        var name = cell(tr, "", "text" + (r.weak ? " weak" : ""));
        var text = document.createElement("span");
        text.className = "name";
        text.textContent = r.name || "";
        text.title = r.name || "";
        name.appendChild(text);
        if (r.weak) {
          var badge = document.createElement("span");
          badge.className = "badge";
          badge.textContent = "weak";
          badge.title = "detection AUROC below " + data.weak_auroc + ": the name predicts poorly where the latent fires";
          name.appendChild(badge);
        }
        cell(tr, fmt(r.name_score, 3));
        cell(tr, fmt(r.auroc, 3), r.weak ? "weak" : "");
      }
      cell(tr, fmt(r.score, 3));
      cell(tr, fmt(r.freq, 4));
      cell(tr, fmt(r.img_freq, 3));
      cell(tr, fmt(r.mean_active, 3));
      cell(tr, fmt(r.max, 3));
      cell(tr, r.label || "", "text");
      cell(tr, fmt(r.precision, 2));
      cell(tr, fmt(r.recall, 2));
      cell(tr, r.flag || "", r.flag ? "flag-" + r.flag : "");
      tbody.appendChild(tr);
    });
    var first = rows.length ? page * PAGE_ROWS + 1 : 0;
    count.textContent = "showing " + first + "\u2013" + Math.min(rows.length, (page + 1) * PAGE_ROWS) + " of " + rows.length + " latents";
    pageInfo.textContent = "page " + (page + 1) + " / " + pages;
    prevBtn.disabled = page === 0;
    nextBtn.disabled = page >= pages - 1;
  }

  document.querySelectorAll("#latents th").forEach(function (th) {
    th.addEventListener("click", function () {
      var key = th.getAttribute("data-key");
      sortDir = key === sortKey ? -sortDir : (th.getAttribute("data-type") === "num" && key !== "id" ? -1 : 1);
      sortKey = key;
      page = 0;
      document.querySelectorAll("#latents th").forEach(function (h) { h.className = ""; });
      th.className = sortDir > 0 ? "asc" : "desc";
      render();
    });
  });
  search.addEventListener("input", function () { page = 0; render(); });
  hideDead.addEventListener("change", function () { page = 0; render(); });
  prevBtn.addEventListener("click", function () { page -= 1; render(); });
  nextBtn.addEventListener("click", function () { page += 1; render(); });
  summary();
  render();
})();
