"""``jaxviz atlas``: a browsable static site of every unit of the chosen layers, from the whole dataset."""

from __future__ import annotations

import json

import jax

import jaxviz
from jaxviz.atlas.build import cache_folder, check_atlas_dir
from jaxviz.cli._options import add_data, add_model, as_option, keyword_defaults, load, name_list, positive_int
from jaxviz.cli.runs import add_process_options, processes, stdout_to_stderr
from jaxviz.cli.visualize import unit_selection

__all__ = ["add_atlas", "atlas_defaults", "cmd_atlas"]

# the API's arguments that are the command's options of the same name (underscores as dashes)
_OPTIONS = ("layers", "units", "k", "steps", "pictures", "diversity", "window", "stride", "images_per_step", "seed",
            "out")


def atlas_defaults() -> dict:
    """``build_atlas``'s keyword options and their defaults, read from its signature (their one owner)."""
    return keyword_defaults(jaxviz.build_atlas)


def add_atlas(sub) -> None:
    p = sub.add_parser("atlas", help="a static site of every unit of the chosen layers: pictures, top images of the "
                                     "whole dataset, occlusion, classes, similar units (open OUT/index.html)")
    add_model(p)
    add_data(p)
    d = atlas_defaults()
    g = p.add_argument_group("atlas")
    g.add_argument("--layers", type=name_list, help="comma-separated layers, e.g. conv6,fc1 (default: the layer "
                                                    "before the output)")
    g.add_argument("--units", type=unit_selection, help="units shown in each layer: START:STOP or a comma-separated "
                                                        "list (default: all)")
    g.add_argument("--k", type=positive_int, default=d["k"], help=f"top images per unit (default: {d['k']})")
    g.add_argument("--steps", type=positive_int, default=d["steps"],
                   help=f"feature-visualization steps (default: {d['steps']})")
    g.add_argument("--pictures", type=positive_int, default=d["pictures"],
                   help=f"feature visualizations per unit, each from its own noise (default: {d['pictures']})")
    g.add_argument("--diversity", type=float, default=d["diversity"],
                   help=f"weight of Lucid's diversity term between a unit's pictures (default: {d['diversity']}; "
                        "too large, it drowns weak units)")
    g.add_argument("--window", type=positive_int, default=d["window"],
                   help=f"occluder size in pixels (default: {d['window']})")
    g.add_argument("--stride", type=positive_int, default=d["stride"],
                   help=f"occluder step in pixels (default: {d['stride']})")
    g.add_argument("--images-per-step", type=positive_int, default=d["images_per_step"],
                   help=f"images per recorded step of the dataset passes (default: {d['images_per_step']})")
    g.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--out", default="atlas", help="the site's folder (default: atlas); its stages are kept beside "
                                                  "it in .NAME.atlas-cache, so a killed build resumes")
    add_process_options(p)
    p.set_defaults(func=cmd_atlas)


def cmd_atlas(args) -> None:
    with stdout_to_stderr():
        result = _build(args)
    if result is not None:
        print(json.dumps(result), flush=True)


def _build(args) -> dict | None:
    with processes(args) as multi:
        if jax.process_index() == 0:
            try:
                check_atlas_dir(args.out)
            except (ValueError, TypeError, OSError) as e:
                raise as_option(e, _OPTIONS) from None
        data, network = load(args)
        try:
            atlas = jaxviz.build_atlas(network, data, args.out, layers=args.layers or None, units=args.units,
                                       k=args.k, steps=args.steps, pictures=args.pictures, diversity=args.diversity,
                                       window=args.window, stride=args.stride, images_per_step=args.images_per_step,
                                       seed=args.seed, progress=True)
        except (ValueError, TypeError, OSError) as e:
            raise as_option(e, _OPTIONS, {"dataset": f"--data {args.data}"}) from None
    if jax.process_index() != 0:
        return None
    return {"atlas": str(atlas.path), "index": str(atlas.path / "index.html"), "cache": str(cache_folder(atlas.path)),
            "layers": {layer: {"units": len(atlas.units[layer]), "dead": len(atlas.dead[layer])}
                       for layer in atlas.layers},
            "seconds": {k: round(v, 3) for k, v in atlas.seconds.items()},
            "reused": [list(r) for r in atlas.reused], "size_bytes": atlas.size_bytes,
            "processes": jax.process_count(), "multi_process": multi}
