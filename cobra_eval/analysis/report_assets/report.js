// The report's gallery: filters, sorts and pages the samples in #report-data.
// Every text from the data is set with textContent (model output is never parsed as HTML),
// and only one page of rows exists in the DOM at a time, so large runs open fast.
(function () {
  "use strict";

  var data = JSON.parse(document.getElementById("report-data").textContent);
  var gallery = data.gallery;
  var methods = gallery.methods;
  var metrics = gallery.metrics;
  var samples = gallery.samples;
  var colours = data.colours || {};
  var PAGE_SIZES = [10, 25, 50, 100, 200];

  var state = {
    text: "",
    method: "",
    status: "",
    sort: "order",
    metric: metrics.indexOf("CIDEr") >= 0 ? "CIDEr" : metrics[0] || "",
    dir: "desc",
    page: 0,
    size: 50,
  };
  var shown = samples;

  function $(id) {
    return document.getElementById(id);
  }

  // el("td", {className: "x"}, child, "text", ...): strings become text nodes, never markup
  function el(tag, props) {
    var node = document.createElement(tag);
    if (props) {
      Object.keys(props).forEach(function (key) {
        if (key === "dataset") {
          Object.keys(props.dataset).forEach(function (d) {
            node.dataset[d] = props.dataset[d];
          });
        } else {
          node[key] = props[key];
        }
      });
    }
    for (var i = 2; i < arguments.length; i++) {
      var child = arguments[i];
      if (child === null || child === undefined || child === false) continue;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function option(value, label) {
    return el("option", { value: value }, label);
  }

  function fmt(value) {
    return value === null || value === undefined ? "–" : value.toFixed(3);
  }

  function metricIndex() {
    return metrics.indexOf(state.metric);
  }

  function value(sample, method, k) {
    var cell = sample.r[method];
    if (!cell || !cell.m || k < 0) return null;
    var v = cell.m[k];
    return v === undefined ? null : v;
  }

  // max - min of the chosen metric across the methods that scored the sample
  function spread(sample, k) {
    var lo = Infinity;
    var hi = -Infinity;
    var count = 0;
    for (var i = 0; i < methods.length; i++) {
      var v = value(sample, methods[i], k);
      if (v === null) continue;
      count++;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    return count >= 2 ? hi - lo : null;
  }

  function visibleMethods() {
    return state.method ? [state.method] : methods;
  }

  // the lower-cased text searched in, built on first use (most readers never search)
  var haystacks = null;
  function haystack(sample, visible) {
    if (haystacks === null) haystacks = new Map();
    var key = sample.pos + "|" + visible.join(",");
    var found = haystacks.get(key);
    if (found === undefined) {
      var parts = sample.refs.slice();
      visible.forEach(function (m) {
        if (sample.r[m]) parts.push(sample.r[m].c);
      });
      found = parts.join("\n").toLowerCase().replace(/\s+/g, " ");
      haystacks.set(key, found);
    }
    return found;
  }

  function matches(sample, visible, needle) {
    if (!visible.some(function (m) { return sample.r[m]; })) return false;
    if (state.status) {
      var hit = visible.some(function (m) {
        return sample.r[m] && sample.r[m].p === state.status;
      });
      if (!hit) return false;
    }
    return !needle || haystack(sample, visible).indexOf(needle) >= 0;
  }

  function sortKey() {
    var k = metricIndex();
    if (state.sort === "disagreement") {
      return function (s) { return spread(s, k); };
    }
    if (state.sort.indexOf("method:") === 0) {
      var method = state.sort.slice(7);
      return function (s) { return value(s, method, k); };
    }
    return null;
  }

  function apply() {
    var visible = visibleMethods();
    var needle = state.text.trim().toLowerCase().replace(/\s+/g, " ");
    var list = samples.filter(function (s) { return matches(s, visible, needle); });
    var key = sortKey();
    if (key) {
      var sign = state.dir === "asc" ? 1 : -1;
      var keyed = list.map(function (s) { return [key(s), s]; });
      keyed.sort(function (x, y) {
        // samples without a value go last whichever the direction; ties keep plan order
        if (x[0] === null || y[0] === null) {
          if (x[0] === y[0]) return x[1].pos - y[1].pos;
          return x[0] === null ? 1 : -1;
        }
        return (x[0] - y[0]) * sign || x[1].pos - y[1].pos;
      });
      list = keyed.map(function (pair) { return pair[1]; });
    }
    shown = list;
    var pages = Math.max(1, Math.ceil(shown.length / state.size));
    if (state.page >= pages) state.page = pages - 1;
    if (state.page < 0) state.page = 0;
    render();
  }

  function renderHead(visible) {
    var head = $("gallery-head");
    var cols = $("gallery-cols");
    head.textContent = "";
    cols.textContent = "";
    cols.appendChild(el("col", { className: "image-col" }));
    cols.appendChild(el("col", { className: "refs-col" }));
    head.appendChild(el("th", null, "Image"));
    head.appendChild(el("th", null, "References"));
    visible.forEach(function (m) {
      cols.appendChild(el("col"));
      var swatch = el("span", { className: "swatch" });
      swatch.style.background = colours[m] || "#888";
      head.appendChild(el("th", { dataset: { method: m } }, swatch, m));
    });
  }

  function metricTable(values) {
    var table = el("table", { className: "metric-table" });
    metrics.forEach(function (name, k) {
      if (values && values[k] !== null && values[k] !== undefined) {
        table.appendChild(el("tr", null, el("th", null, name),
          el("td", { className: "num" }, values[k].toFixed(4))));
      }
    });
    return table;
  }

  function metricTitle(values) {
    var lines = [];
    metrics.forEach(function (name, k) {
      if (values && values[k] !== null && values[k] !== undefined) {
        lines.push(name + ": " + values[k].toFixed(4));
      }
    });
    return lines.join("\n") || "no metrics";
  }

  function statusBadge(status) {
    var kind = status === "ok" ? "ok" : status === "failed" || status === "empty"
      ? "failed" : "fallback";
    return el("span", { className: "badge parse-status " + kind, title: "parse status" }, status);
  }

  function scoreBadge(values) {
    var k = metricIndex();
    var v = values && k >= 0 ? values[k] : null;
    return el("span", { className: "score", title: metricTitle(values) },
      state.metric + " " + fmt(v));
  }

  // a raw output stored as parts (see report_gallery.raw_parts): 0 is the reasoning,
  // 1 the caption, k + 2 line k of the reasoning without its "Label: "
  var LINE_LABEL = /^[A-Za-z][A-Za-z _-]{0,30}: /;
  function joinRaw(raw, reasoning, caption) {
    if (typeof raw === "string") return raw;
    var lines = reasoning.split("\n");
    return raw.map(function (part) {
      if (typeof part === "string") return part;
      if (part === 0) return reasoning;
      if (part === 1) return caption;
      return lines[part - 2].replace(LINE_LABEL, "");
    }).join("");
  }

  function passBlock(pass, cell) {
    var caption = pass.c !== undefined ? pass.c : cell.c;
    var reasoning = pass.t !== undefined ? pass.t : cell.t || "";
    var raw = pass.raw === undefined ? caption : joinRaw(pass.raw, reasoning, caption);
    var prompt = gallery.prompts[pass.q] || "";
    return el("div", { className: "pass" },
      el("div", { className: "pass-head" }, pass.n + " ", statusBadge(pass.p || cell.p), " ",
        scoreBadge(pass.m || cell.m)),
      el("div", null, caption || "(empty caption)"),
      reasoning ? el("details", null, el("summary", null, "reasoning"), el("pre", null, reasoning))
        : null,
      el("details", null, el("summary", null, "prompt"), el("pre", null, prompt)),
      el("details", null, el("summary", null, "raw output"), el("pre", null, raw)));
  }

  function resultCell(sample, method) {
    var cell = sample.r[method];
    var td = el("td", { className: "result", dataset: { method: method } });
    if (!cell) {
      td.appendChild(el("span", { className: "muted" }, "no result"));
      return td;
    }
    td.appendChild(el("div", { className: "caption" + (cell.c ? "" : " empty") },
      cell.c || "(empty caption)"));
    td.appendChild(el("div", { className: "scores" }, scoreBadge(cell.m), statusBadge(cell.p)));
    if (cell.e) td.appendChild(el("div", { className: "error" }, cell.e));
    td.appendChild(el("details", { className: "metrics" }, el("summary", null, "all metrics"),
      metricTable(cell.m)));
    if (cell.t) {
      td.appendChild(el("details", { className: "reasoning" }, el("summary", null, "reasoning"),
        el("pre", null, cell.t)));
    }
    if (cell.ps && cell.ps.length) {
      var passes = el("details", { className: "passes" },
        el("summary", null, cell.ps.length === 1 ? "1 pass" : cell.ps.length + " passes"));
      cell.ps.forEach(function (pass) { passes.appendChild(passBlock(pass, cell)); });
      td.appendChild(passes);
    }
    return td;
  }

  function imageCell(sample) {
    var td = el("td", { className: "image" });
    if (typeof sample.img === "string" && sample.img.indexOf("data:image/") === 0) {
      td.appendChild(el("img", { src: sample.img, alt: "image " + sample.id, loading: "lazy" }));
    } else {
      td.appendChild(el("div", { className: "placeholder", title: "image not found" },
        "no image"));
    }
    td.appendChild(el("div", { className: "image-id" }, String(sample.id)));
    if (methods.length >= 2) {
      var d = spread(sample, metricIndex());
      td.appendChild(el("div", { className: "spread", title: "max - min across methods" },
        "Δ " + state.metric + " " + fmt(d)));
    }
    return td;
  }

  function render() {
    var visible = visibleMethods();
    renderHead(visible);
    var body = $("gallery-body");
    var start = state.page * state.size;
    var page = shown.slice(start, start + state.size);
    var rows = document.createDocumentFragment();
    page.forEach(function (sample) {
      var tr = el("tr", { className: "sample", dataset: { imageId: String(sample.id) } });
      tr.appendChild(imageCell(sample));
      var refs = el("ol");
      sample.refs.forEach(function (ref) { refs.appendChild(el("li", null, ref)); });
      tr.appendChild(el("td", { className: "refs" }, refs));
      visible.forEach(function (m) { tr.appendChild(resultCell(sample, m)); });
      rows.appendChild(tr);
    });
    body.textContent = "";
    body.appendChild(rows);
    var pages = Math.max(1, Math.ceil(shown.length / state.size));
    $("page-info").textContent = "Page " + (state.page + 1) + " of " + pages;
    $("match-count").textContent = shown.length === samples.length
      ? samples.length + " samples"
      : shown.length + " of " + samples.length + " samples match";
    $("page-prev").disabled = state.page === 0;
    $("page-next").disabled = state.page >= pages - 1;
    document.body.dataset.galleryReady = "1";
  }

  function setup() {
    var method = $("filter-method");
    var status = $("filter-status");
    var sort = $("sort-by");
    var metric = $("sort-metric");
    var size = $("page-size");
    methods.forEach(function (m) {
      method.appendChild(option(m, m));
      sort.appendChild(option("method:" + m, m + " score"));
    });
    gallery.statuses.forEach(function (s) { status.appendChild(option(s, s)); });
    metrics.forEach(function (m) { metric.appendChild(option(m, m)); });
    PAGE_SIZES.forEach(function (n) { size.appendChild(option(String(n), n + " per page")); });
    metric.value = state.metric;
    size.value = String(state.size);

    var timer = null;
    $("filter-text").addEventListener("input", function (event) {
      clearTimeout(timer);
      timer = setTimeout(function () {
        state.text = event.target.value;
        state.page = 0;
        apply();
      }, 120);
    });
    function onChange(node, field, cast) {
      node.addEventListener("change", function () {
        state[field] = cast ? cast(node.value) : node.value;
        state.page = 0;
        apply();
      });
    }
    onChange(method, "method");
    onChange(status, "status");
    onChange(sort, "sort");
    onChange(metric, "metric");
    onChange($("sort-dir"), "dir");
    onChange(size, "size", Number);
    $("page-prev").addEventListener("click", function () { state.page--; apply(); });
    $("page-next").addEventListener("click", function () { state.page++; apply(); });
    apply();
  }

  setup();
})();
