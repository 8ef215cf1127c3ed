"""The atlas's static site: two pages, per-layer data and sprite sheets, nothing fetched from the internet.

Layout of an atlas folder::

    index.html           the model, and per layer a grid of unit cards (filter, sort, hide dead, jump)
    unit.html            one unit: ``unit.html?layer=fc1&unit=7``, rendered from the layer's data
    atlas.css, atlas.js  the style and the (vanilla) script of both pages
    atlas.json           the manifest: this folder is a jaxviz atlas; the model, layers and settings
    data/meta.js         the manifest for the pages
    data/L.json          per layer: every shown unit's numbers (the pages read the same object from data/L.js,
                         which a page can load from file:// where fetching JSON is refused)
    data/L.npz           per layer, for programs: the occlusion maps, class means, correlations (float32)
    data/L-*.jpg         per layer, sprite sheets: the unit pictures, the top images, the occluded top images

Numbers are JSON numbers as computed (NaN becomes null); the pages round them for display only.
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil
from importlib import resources
from pathlib import Path

import numpy as np

from jaxviz._io import atomic_write_bytes
from jaxviz._version import __version__
from jaxviz.analysis.masks import apply_mask, heatmap_mask
from jaxviz.analysis.units import selectivity_of_means, unit_selectivity

__all__ = ["ENTRIES", "FORMAT", "MANIFEST", "SIMILAR", "write_site"]

FORMAT = 1
MANIFEST = "atlas.json"
STATIC = ("index.html", "unit.html", "atlas.css", "atlas.js")
ENTRIES = (*STATIC, MANIFEST, "data")
SIMILAR = 6  # most correlated units linked from a unit's page
JPEG_QUALITY = 90


def _number(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _sprite(tiles: np.ndarray, path: Path) -> dict | None:
    """Tiles uint8 (T, h, w, C) as one JPEG grid, ``ceil(sqrt(T))`` columns; where each tile lies."""
    from PIL import Image

    if len(tiles) == 0:
        return None
    count, h, w, c = tiles.shape
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    sheet = np.zeros((rows * h, columns * w, c), np.uint8)
    for i, t in enumerate(tiles):
        r, q = divmod(i, columns)
        sheet[r * h:(r + 1) * h, q * w:(q + 1) * w] = t
    buffer = io.BytesIO()
    Image.fromarray(sheet[..., 0] if c == 1 else sheet).save(buffer, "JPEG", quality=JPEG_QUALITY)
    atomic_write_bytes(path, buffer.getvalue())
    return {"file": path.name, "columns": columns, "count": int(count), "tile": [int(h), int(w)]}


def _stem(index: int, layer: str) -> str:
    return f"{index}-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", layer)


def layer_data(network, dataset, layer, units, stats, occlusion, pictures, folder: Path, stem: str) -> dict:
    """The JSON of one layer, writing its sprites and numbers (``data/<stem>*``) into ``folder``."""
    classes = list(dataset.class_names)
    images, labels = dataset.images, dataset.labels
    live = [u for u in units if stats.topk_values[0, u] > 0]
    where = {u: p for p, u in enumerate(live)}
    union, maps = occlusion["union"], occlusion["maps"]
    k = stats.topk_index.shape[0]
    h, w = images.shape[1:3]
    occluded = [apply_mask(images[stats.topk_index[j, u]], heatmap_mask(maps[where[u], j], (h, w)))
                for u in live for j in range(k)]
    sprites = {
        "images": _sprite(np.asarray(images[union]) if len(union) else np.zeros((0, h, w, images.shape[3]), np.uint8),
                          folder / f"{stem}-images.jpg"),
        "occlusion": _sprite(np.asarray(occluded), folder / f"{stem}-occlusion.jpg"),
        "pictures": _sprite(pictures["images"].reshape(-1, *pictures["images"].shape[2:]),
                            folder / f"{stem}-pictures.jpg"),
    }
    per_unit_pictures = pictures["images"].shape[1] if len(live) else 0
    with_images = int((stats.class_count > 0).sum())  # the index compares the classes the data has
    selectivity = selectivity_of_means(stats.class_means) if with_images >= 2 else None
    rank = {}
    if selectivity is not None:
        shown_units = set(units)
        ranking = [u for u in selectivity.ranking().tolist() if u in shown_units]
        rank = {u: i for i, u in enumerate(ranking)}
    correlation = stats.correlation()
    shown = np.asarray(units)
    records = []
    for position, u in enumerate(units):
        dead = u not in where
        record = {"unit": int(u), "dead": dead, "max": _number(stats.topk_values[0, u]), "mean": _number(stats.mean[u]),
                  "prev": int(units[position - 1]) if position else None,
                  "next": int(units[position + 1]) if position + 1 < len(units) else None}
        if selectivity is not None:  # (a dataset of one class has no selectivity)
            record |= {"selectivity": None if dead else _number(selectivity.index[u]),
                       "preferred": None if dead else int(selectivity.preferred_class[u]),
                       "rank": rank[u],
                       "class_means": [_number(m) for m in stats.class_means[:, u]]}
        if not dead:
            p = where[u]
            # the top images that excite the unit at all: a sparse unit's top K ends in images at 0 (ties, the
            # lowest indices), which say nothing about it and would outvote its real class
            active = int((stats.topk_values[:, u] > 0).sum())
            index = stats.topk_index[:active, u]
            record["top"] = [{"image": int(i), "label": int(labels[i]), "score": _number(s),
                              "predicted": int(stats.predicted[i]) if network.is_classifier else None,
                              "tile": int(np.searchsorted(union, i)), "occlusion": p * k + j}
                             for j, (i, s) in enumerate(zip(index, stats.topk_values[:active, u]))]
            if len(classes) >= 2:
                top_classes = unit_selectivity(index[:, None], labels, len(classes))
                record |= {"histogram": top_classes.histogram[0].tolist(),
                           "majority": int(top_classes.majority_class[0]),
                           "majority_share": _number(top_classes.score[0])}
            record["pictures"] = [{"tile": p * per_unit_pictures + b, "activation": _number(pictures["activation"][p, b]),
                                   "predicted": int(pictures["predicted"][p, b]) if network.is_classifier else None}
                                  for b in range(per_unit_pictures)]
            record["exemplar_ratio"] = _number(pictures["exemplar_ratio"][p])
            r = correlation[u, shown]
            order = [int(i) for i in np.lexsort((shown, -np.nan_to_num(r, nan=-np.inf)))
                     if shown[i] != u and np.isfinite(r[i])][:SIMILAR]
            record["similar"] = [{"unit": int(shown[i]), "correlation": _number(r[i])} for i in order]
        records.append(record)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, units=np.asarray(units, np.int64), live=np.asarray(live, np.int64),
                        occlusion=maps.astype(np.float32), occlusion_images=union,
                        topk_index=stats.topk_index[:, shown], topk_values=stats.topk_values[:, shown],
                        class_means=stats.class_means[:, shown].astype(np.float32),
                        correlation=correlation[np.ix_(shown, shown)].astype(np.float32),
                        mean=stats.mean[shown].astype(np.float32))
    atomic_write_bytes(folder / f"{stem}.npz", buffer.getvalue())
    return {"layer": layer, "file": stem, "width": network.num_units(layer), "k": k, "shape": list(network.output_shape(layer)),
            "sprites": sprites, "units": records, "pictures_per_unit": per_unit_pictures}


def write_site(folder: Path, network, dataset, layers, chosen, stats, occlusion, pictures, settings: dict) -> dict:
    """Write the whole site into the (empty, temporary) ``folder``; returns the manifest."""
    static = resources.files("jaxviz.atlas") / "static"
    for name in STATIC:
        with resources.as_file(static / name) as source:
            shutil.copyfile(source, folder / name)
    data = folder / "data"
    data.mkdir()
    summary = [{"layer": info.name, "shape": list(info.output_shape), "params": int(info.params), "kind": info.kind}
               for info in network.summary()]
    entries = []
    for i, layer in enumerate(layers):
        stem = _stem(i, layer)
        value = layer_data(network, dataset, layer, chosen[layer], stats[layer], occlusion[layer], pictures[layer],
                           data, stem)
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
        atomic_write_bytes(data / f"{stem}.json", text.encode())
        atomic_write_bytes(data / f"{stem}.js", f"JAXVIZ_ATLAS.data[{json.dumps(layer)}] = {text};\n".encode())
        entries.append({"name": layer, "file": stem, "width": value["width"], "shown": len(chosen[layer]),
                        "dead": sum(1 for r in value["units"] if r["dead"]), "shape": value["shape"]})
    manifest = {"jaxviz_atlas": FORMAT, "jaxviz": __version__, "model": network.name or "",
                "classes": list(dataset.class_names), "model_classes": list(network.class_names or ()),
                "layers": entries, "summary": summary, "settings": settings}
    text = json.dumps(manifest, allow_nan=False, indent=1)
    atomic_write_bytes(data / "meta.js", f"var JAXVIZ_ATLAS = {{meta: {text}, data: {{}}}};\n".encode())
    atomic_write_bytes(folder / MANIFEST, (text + "\n").encode())
    return manifest
