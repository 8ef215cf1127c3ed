/* jaxviz atlas: the index and unit pages, rendered from data/meta.js and the per-layer data/<layer>.js.
   Plain script tags (no fetch), so the site opens from file:// as well as from a web server. */
"use strict";
var jaxvizAtlas = (function () {
  var atlas = window.JAXVIZ_ATLAS;
  var meta = atlas.meta;

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === "text") { node.textContent = attrs[key]; } else { node.setAttribute(key, attrs[key]); }
    });
    (children || []).forEach(function (child) { if (child) { node.appendChild(child); } });
    return node;
  }

  function fail(message) {
    var box = document.getElementById("error");
    box.textContent = message;
    box.hidden = false;
  }

  function layerEntry(name) {
    for (var i = 0; i < meta.layers.length; i++) { if (meta.layers[i].name === name) { return meta.layers[i]; } }
    return null;
  }

  /* Load the data of the named layers (script tags), then call done(). */
  function load(names, done) {
    var left = names.length;
    if (!left) { done(); return; }
    names.forEach(function (name) {
      var script = el("script", {src: "data/" + layerEntry(name).file + ".js"});
      script.onload = function () { left -= 1; if (left === 0) { done(); } };
      script.onerror = function () { fail("could not load the data of layer " + name); };
      document.head.appendChild(script);
    });
  }

  /* Tile i of a sprite sheet, drawn `size` pixels wide. */
  function tile(sprite, i, size) {
    var h = sprite.tile[0], w = sprite.tile[1], scale = size / w;
    var col = i % sprite.columns, row = Math.floor(i / sprite.columns);
    var img = el("img", {src: "data/" + sprite.file, alt: "", loading: "eager"});
    img.style.width = (sprite.columns * w * scale) + "px";
    img.style.left = -(col * w * scale) + "px";
    img.style.top = -(row * h * scale) + "px";
    var box = el("span", {"class": "tile"}, [img]);
    box.style.width = size + "px";
    box.style.height = Math.round(h * scale) + "px";
    return box;
  }

  function fmt(x, digits) { return x === null || x === undefined ? "n/a" : Number(x).toFixed(digits); }
  function className(i) { return i === null || i === undefined ? "n/a" : meta.classes[i]; }
  function predictedName(i) { return i === null || i === undefined ? "n/a" : meta.model_classes[i]; }
  function unitHref(layer, unit) { return "unit.html?layer=" + encodeURIComponent(layer) + "&unit=" + unit; }

  /* ---- index ---- */
  function card(layer, data, u) {
    var a = el("a", {"class": "card" + (u.dead ? " dead" : ""), href: unitHref(layer, u.unit),
                     "data-layer": layer, "data-unit": String(u.unit), "data-dead": String(u.dead),
                     "data-preferred": u.preferred === null || u.preferred === undefined ? "" : String(u.preferred),
                     "data-rank": String(u.rank === undefined ? u.unit : u.rank),
                     "data-activation": String(u.max === null ? -Infinity : u.max)});
    if (u.dead || !u.pictures.length) {
      a.appendChild(el("div", {"class": "blank", text: "dead"}));
    } else {
      a.appendChild(tile(data.sprites.pictures, u.pictures[0].tile, 72));
    }
    a.appendChild(el("div", {text: "unit " + u.unit}));
    var note = u.dead ? "never above 0" : (u.preferred === undefined ? "max " + fmt(u.max, 2)
      : className(u.preferred) + " " + fmt(u.selectivity, 2));
    a.appendChild(el("div", {"class": "muted", text: note}));
    return a;
  }

  function applyControls() {
    var wanted = document.getElementById("filter-class").value;
    var hideDead = document.getElementById("hide-dead").checked;
    var sort = document.getElementById("sort").value;
    var shown = 0;
    Array.prototype.forEach.call(document.querySelectorAll(".grid"), function (grid) {
      var cards = Array.prototype.slice.call(grid.children);
      cards.forEach(function (c) {
        var hide = (hideDead && c.dataset.dead === "true") || (wanted !== "" && c.dataset.preferred !== wanted);
        c.hidden = hide;
        if (!hide) { shown += 1; }
      });
      cards.sort(function (a, b) {
        /* by selectivity: the build's ranking (ClassSelectivity.ranking: ties broken there) */
        var d = sort === "selectivity" ? Number(a.dataset.rank) - Number(b.dataset.rank)
          : sort === "activation" ? Number(b.dataset.activation) - Number(a.dataset.activation) : 0;
        return d || Number(a.dataset.unit) - Number(b.dataset.unit);
      });
      cards.forEach(function (c) { grid.appendChild(c); });
    });
    document.getElementById("shown-count").textContent = shown + " units shown";
  }

  function index() {
    document.getElementById("model-name").textContent = meta.model;
    var total = 0, dead = 0;
    meta.layers.forEach(function (l) { total += l.shown; dead += l.dead; });
    document.getElementById("summary").textContent = total + " units of " + meta.layers.length + " layer(s), " +
      dead + " dead on the data; from " + meta.settings.images + " images (" + meta.settings.data + "), top " +
      meta.settings.k + " images per unit, " + meta.settings.pictures + " picture(s) per unit at " +
      meta.settings.steps + " steps.";
    var table = document.getElementById("model-table");
    table.appendChild(el("tr", {}, ["layer", "output shape", "parameters", "kind"].map(function (t) {
      return el("th", {text: t}); })));
    meta.summary.forEach(function (row) {
      table.appendChild(el("tr", {}, [row.layer, row.shape.join(" x "), String(row.params), row.kind].map(
        function (t) { return el("td", {text: t}); })));
    });
    var filter = document.getElementById("filter-class");
    meta.classes.forEach(function (name, i) { filter.appendChild(el("option", {value: String(i), text: name})); });
    var jumpLayer = document.getElementById("jump-layer");
    meta.layers.forEach(function (l) { jumpLayer.appendChild(el("option", {value: l.name, text: l.name})); });
    load(meta.layers.map(function (l) { return l.name; }), function () {
      var main = document.getElementById("layers");
      meta.layers.forEach(function (l) {
        var data = atlas.data[l.name];
        var grid = el("div", {"class": "grid", "data-layer": l.name});
        data.units.forEach(function (u) { grid.appendChild(card(l.name, data, u)); });
        main.appendChild(el("section", {id: "layer-" + l.file}, [
          el("h2", {text: l.name + " (" + l.shown + " of " + l.width + " units shown, " + l.dead + " dead)"}), grid]));
      });
      ["filter-class", "sort", "hide-dead"].forEach(function (id) {
        document.getElementById(id).addEventListener("change", applyControls);
      });
      document.getElementById("jump").addEventListener("submit", function (event) {
        event.preventDefault();
        var layer = jumpLayer.value, unit = Number(document.getElementById("jump-unit").value);
        var found = atlas.data[layer].units.some(function (u) { return u.unit === unit; });
        if (found) { window.location.href = unitHref(layer, unit); }
        else { document.getElementById("jump-message").textContent = "no unit " + unit + " shown in " + layer; }
      });
      applyControls();
      document.body.dataset.ready = "true";
    });
  }

  /* ---- unit page ---- */
  function numberRow(label, field, value) {
    return el("tr", {}, [el("th", {text: label}), el("td", {"data-field": field, text: value})]);
  }

  function bars(title, values, labels, field, preferred) {
    var finite = values.filter(function (v) { return v !== null; });
    var top = Math.max.apply(null, finite.map(Math.abs).concat([1e-12]));
    var table = el("table", {"class": "bars", "data-field": field});
    values.forEach(function (v, i) {
      var bar = el("div", {"class": v < 0 ? "negative" : ""});
      bar.style.width = (v === null ? 0 : Math.round(120 * Math.abs(v) / top)) + "px";
      table.appendChild(el("tr", {"class": i === preferred ? "preferred" : ""}, [
        el("td", {text: labels[i]}), el("td", {"class": "bar"}, [bar]),
        el("td", {"class": "value", text: v === null ? "n/a" : String(Number(v.toPrecision(4)))})]));
    });
    return el("section", {}, [el("h3", {text: title}), table]);
  }

  function unit() {
    var params = new URLSearchParams(window.location.search);
    var layer = params.get("layer"), number = Number(params.get("unit"));
    var entry = layerEntry(layer);
    if (!entry) { fail("no layer " + layer + " in this atlas"); return; }
    load([layer], function () {
      var data = atlas.data[layer], u = null;
      data.units.forEach(function (x) { if (x.unit === number) { u = x; } });
      if (!u) { fail("no unit " + number + " of " + layer + " in this atlas"); return; }
      document.title = "jaxviz atlas: " + layer + " unit " + number;
      document.getElementById("unit-title").textContent = layer + ", unit " + number + (u.dead ? " (dead)" : "");
      [["prev", u.prev], ["next", u.next]].forEach(function (p) {
        var link = document.getElementById(p[0]);
        if (p[1] === null) { link.removeAttribute("href"); link.className = "muted"; }
        else { link.href = unitHref(layer, p[1]); link.dataset.unit = String(p[1]); }
      });
      var main = document.getElementById("unit");
      var numbers = el("table", {id: "numbers"}, [
        numberRow("largest activation on the data", "max", fmt(u.max, 4)),
        numberRow("mean activation", "mean", fmt(u.mean, 4))]);
      if (u.class_means) {
        numbers.appendChild(numberRow("preferred class (largest class mean)", "preferred", className(u.preferred)));
        numbers.appendChild(numberRow("class selectivity index", "selectivity", fmt(u.selectivity, 4)));
      }
      if (!u.dead) {
        if (u.histogram) {
          numbers.appendChild(numberRow("majority class of the top " + u.top.length, "majority", className(u.majority)));
          numbers.appendChild(numberRow("its share of the top " + u.top.length, "majority_share", fmt(u.majority_share, 4)));
        }
        numbers.appendChild(numberRow("exemplar ratio (picture / best image)", "exemplar_ratio", fmt(u.exemplar_ratio, 4)));
      }
      main.appendChild(el("section", {}, [el("h2", {text: "Numbers"}), numbers]));
      if (u.dead) {
        main.appendChild(el("p", {text: "This unit is never above 0 on the data: dead there. Nothing is drawn."}));
      } else {
        var pictures = el("div", {id: "pictures"});
        u.pictures.forEach(function (p) {
          pictures.appendChild(el("figure", {}, [tile(data.sprites.pictures, p.tile, 160), el("figcaption", {
            text: "activation " + fmt(p.activation, 3) + (p.predicted === null ? "" : ", looks like " +
              predictedName(p.predicted) + " to the model")})]));
        });
        main.appendChild(el("section", {}, [el("h2", {text: "What it looks for (feature visualization)"}),
          el("p", {"class": "muted", text: "Optimized images; trust them as far as the exemplar ratio and the top " +
            "images below agree."}), pictures]));
        var top = el("div", {id: "top-images"});
        u.top.forEach(function (t, j) {
          top.appendChild(el("figure", {"data-image": String(t.image)}, [
            el("div", {"class": "pair"}, [tile(data.sprites.images, t.tile, 96), tile(data.sprites.occlusion, t.occlusion, 96)]),
            el("figcaption", {text: "#" + (j + 1) + " image " + t.image + ": " + className(t.label) +
              (t.predicted === null ? "" : " (predicted " + predictedName(t.predicted) + ")") +
              ", activation " + fmt(t.score, 3)})]));
        });
        main.appendChild(el("section", {}, [el("h2", {text: "Its top " + u.top.length + " images of the data" +
          (u.top.length < data.k ? " (the only ones above 0)" : "")}),
          el("p", {"class": "muted", text: "Each image beside the same image where occluding lowers this unit " +
            "most (the rest dimmed)."}), top]));
        if (u.histogram) {
          main.appendChild(bars("Classes of the top " + u.top.length + " images", u.histogram, meta.classes,
                                "histogram", u.majority));
        }
        var similar = el("ul", {id: "similar"});
        u.similar.forEach(function (s) {
          similar.appendChild(el("li", {}, [el("a", {href: unitHref(layer, s.unit), "data-unit": String(s.unit),
            text: "unit " + s.unit}), document.createTextNode(" (correlation " + fmt(s.correlation, 3) + ")")]));
        });
        main.appendChild(el("section", {}, [el("h2", {text: "Most similar units (activation correlation)"}), similar]));
      }
      if (u.class_means) {
        main.appendChild(bars("Mean activation per class (the selectivity index compares them)", u.class_means,
                              meta.classes, "class_means", u.preferred));
      }
      document.body.dataset.ready = "true";
    });
  }

  return {index: index, unit: unit};
})();
