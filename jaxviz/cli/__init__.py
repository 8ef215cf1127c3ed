"""The ``jaxviz`` command line. Uses only the public API.

    jaxviz report --out DIR          every analysis as an HTML page (the main job)
    jaxviz evaluate --json           accuracy, per-class accuracy, confusion matrix
    jaxviz occlude --out DIR         occlusion maps (.npz + PNG overlays); with --all, every image of the
                                     dataset into a resumable store, on one process or many
    jaxviz attribute --method M      perturbation (occlusion, RISE, feature ablation) or gradient
                                     (saliency, ixg, ig, smoothgrad, gradcam) maps of chosen images;
                                     with --all, a perturbation method over the whole dataset
    jaxviz faithfulness              deletion / insertion AUC and MuFidelity of the methods' maps
    jaxviz sanity                    the model-randomization sanity check of the gradient methods
    jaxviz atlas --out DIR           a static site of every unit of chosen layers, from the whole dataset
    jaxviz cka                       linear CKA between every pair of layers (or with --other model)
    jaxviz tcav --targets C          TCAV: which concepts raise which classes' logits, with significance
    jaxviz filters | activations | topk | tsne | summary | train

Every analysis command takes ``--model FILE_OR_MODULE:ATTR`` (your model) or
runs the pretrained CIFAR-10 CNN. User errors print one line and exit with 2.
"""

from __future__ import annotations

import signal
import sys
import threading

import jaxviz
from jaxviz.cli._options import Parser, add_data, add_fields, add_model, int_list, positive_int
from jaxviz.cli.atlas import add_atlas
from jaxviz.cli.attribution import add_attribute, add_faithfulness, add_sanity
from jaxviz.cli.commands import (
    OCCLUDE_FIELDS,
    REPORT_FIELDS,
    STUDY_FIELDS,
    TRAIN_FIELDS,
    cmd_activations,
    cmd_evaluate,
    cmd_filters,
    cmd_occlude,
    cmd_report,
    cmd_summary,
    cmd_topk,
    cmd_train,
    cmd_tsne,
)
from jaxviz.cli.concepts import add_cka, add_tcav
from jaxviz.cli.runs import add_run_options
from jaxviz.cli.visualize import add_visualize
from jaxviz.methods.occlusion import ANCHORS

__all__ = ["build_parser", "main"]

REPORT_HELP = {
    "layer": "the layer whose units are studied (default: the one before the output, fc1 in the CNN)",
    "units": "units to show, e.g. 3,17,42 (default: picked by selectivity)",
    "num_units": "how many units to pick when --units is not given",
    "k": "top images per unit", "window": "occluder size in pixels", "stride": "occluder step in pixels",
    "anchor": "occluder placement", "threshold": "mask threshold in [0, 1]", "sigma": "mask smoothing in pixels",
    "tsne_points": "t-SNE points", "tsne_iter": "t-SNE iterations (>= 250)", "perplexity": "t-SNE perplexity",
    "activation_images": "images in the activation-map figures", "seed": "t-SNE, RISE and MuFidelity seed",
    "trust_images": "images whose attribution maps are compared",
    "rise_masks": "RISE masks per image in that comparison",
    "trust_methods": "methods compared, from occlusion,rise,ablation,saliency,ixg,ig,smoothgrad,gradcam",
    "sanity_methods": "gradient methods of the randomization sanity check, from saliency,ixg,ig,smoothgrad,gradcam, "
                      "or none",
    "sanity_images": "images of the sanity check (the first of each class)",
    "vis_steps": "feature-visualization steps per shown unit (0: no such section)",
    "cka_batch": "images per minibatch of the CKA between every pair of layers (0: no such section)",
    "tcav_runs": "TCAV runs of the built-in concepts for every class (0: no such section)",
}
TRAIN_HELP = {
    "epochs": "epochs", "batch_size": "images per step", "peak_lr": "peak learning rate (also --lr)",
    "momentum": "Nesterov momentum", "weight_decay": "weight decay on kernels", "label_smoothing": "label smoothing",
    "warmup_fraction": "share of steps warming up", "seed": "seed of the init, shuffling and augmentation",
    "widths": "channels of each conv block", "convs_per_block": "3x3 convs per block", "hidden": "units of fc1",
    "dropout": "dropout rate",
}


def build_parser() -> Parser:
    parser = Parser(prog="jaxviz", description="What did this CNN learn? (JAX/Flax)")
    parser.add_argument("--version", action="version", version=f"jaxviz {jaxviz.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("report", help="write an HTML report of every analysis (the main job)")
    add_model(p)
    add_data(p)
    p.add_argument("--out", default="jaxviz-report", help="output directory (default: jaxviz-report)")
    add_fields(p, jaxviz.ReportSettings, REPORT_FIELDS, REPORT_HELP, anchor=ANCHORS)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("evaluate", help="accuracy, per-class accuracy and confusion matrix")
    add_model(p)
    add_data(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--confusion-png", help="also write the confusion matrix as a PNG")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train", help="train the built-in CNN (resumable) and write a weights file")
    add_data(p, default_split="train")
    p.add_argument("--out", default="weights.msgpack", help="weights file to write")
    p.add_argument("--checkpoint-dir", default="jaxviz-checkpoints",
                   help="where a checkpoint is written after every epoch (default: jaxviz-checkpoints); a run "
                        "resumes from it only if it holds the same run (data, settings, model)")
    p.add_argument("--fresh", action="store_true",
                   help="start over: ignore the checkpoint in --checkpoint-dir and overwrite it")
    add_fields(p, jaxviz.TrainConfig, TRAIN_FIELDS, TRAIN_HELP)
    p.add_argument("--lr", dest="peak_lr", type=float, help="the same as --peak-lr")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("summary", help="layer names, output shapes, parameter counts")
    add_model(p)
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("filters", help="PNG of a conv layer's kernels")
    add_model(p)
    p.add_argument("--layer", help="a layer with a conv kernel (default: the first)")
    p.add_argument("--out", default="filters.png")
    p.set_defaults(func=cmd_filters)

    p = sub.add_parser("activations", help="PNG of a layer's feature maps for some images")
    add_model(p)
    add_data(p)
    p.add_argument("--layer", help="a layer with (h, w, channels) maps (default: the first conv layer)")
    p.add_argument("--images", type=int_list, default=(0, 1, 2, 3), help="dataset indices (default: 0,1,2,3)")
    p.add_argument("--channels", type=int_list, help="channels to show (default the first 8)")
    p.add_argument("--out", default="activations.png")
    p.set_defaults(func=cmd_activations)

    for name, func, helptext, fields in (
            ("topk", cmd_topk, "top-K images per unit, with selectivity", STUDY_FIELDS),
            ("occlude", cmd_occlude, "occlusion maps (.npz) and PNG overlays", OCCLUDE_FIELDS)):
        p = sub.add_parser(name, help=helptext)
        add_model(p)
        add_data(p)
        add_fields(p, jaxviz.ReportSettings, fields, REPORT_HELP, anchor=ANCHORS)
        p.add_argument("--out", default=name, help="output directory")
        if name == "occlude":
            p.add_argument("--images", type=int_list, help="dataset indices to occlude instead of each unit's top K")
            p.add_argument("--classes", help="class names or indices to keep at the output layer")
            p.add_argument("--fill", default="0", help="a value, one per channel (r,g,b), 'mean' or 'blur', "
                                                       "in model-input space")
            add_run_options(p)
        p.set_defaults(func=func)

    p = sub.add_parser("tsne", help="t-SNE scatter of a layer's features")
    add_model(p)
    add_data(p)
    p.add_argument("--layer", help="default: the layer before the output")
    p.add_argument("--points", type=positive_int, default=1000)
    p.add_argument("--perplexity", type=float, default=30.0)
    p.add_argument("--max-iter", type=positive_int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="tsne.png")
    p.set_defaults(func=cmd_tsne)

    add_attribute(sub)
    add_faithfulness(sub)
    add_sanity(sub)
    add_visualize(sub)
    add_atlas(sub)
    add_cka(sub)
    add_tcav(sub)
    return parser


def _terminate(signum, frame):
    # SIGTERM's default action kills the process at once, skipping the cleanup in
    # `finally` blocks (temporary files, report folders, locks); exit through them.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        args.func(args)
    except (ValueError, TypeError, OSError) as e:  # user errors: one line, no traceback
        print(f"jaxviz {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jaxviz {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0
