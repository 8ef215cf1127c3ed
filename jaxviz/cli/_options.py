"""Shared options of the ``jaxviz`` commands: the model, the data, settings derived from dataclasses.

Options that configure an analysis or training are generated from the fields
of ``ReportSettings`` and ``TrainConfig``, so the defaults live in one place.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import typing
from pathlib import Path

import jaxviz
from jaxviz.checks import NamedArgumentError, NotADirectoryArgumentError
from jaxviz.data import to_grayscale

DATA_CHOICES = ("sample", "cifar10", "folder")


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, exit status 2, like every other user error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def int_at_least(low: int, what: str):
    """An argparse type: an int >= ``low`` (``what`` names it in the error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


positive_int = int_at_least(1, "a positive int")
nonnegative_int = int_at_least(0, "an int >= 0")
ZERO_MEANS_NONE = ("vis_steps", "cka_batch", "tcav_runs")  # int fields where 0 turns something off


def int_list(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated ints, e.g. ``3,17,42``."""
    try:
        values = tuple(int(t) for t in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one integer, got {text!r}")
    return values


def input_shape(text: str) -> tuple[int, int, int]:
    """argparse type: ``H,W,C``, three positive ints, e.g. ``32,32,1``."""
    values = int_list(text)
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected H,W,C (three positive ints, e.g. 32,32,1), got {text!r}")
    return values


def name_list(text: str) -> tuple[str, ...]:
    """argparse type: comma-separated names, e.g. ``saliency,ig``; ``none`` for no names."""
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names (or none), got {text!r}")
    return () if names == ("none",) else names


def keyword_defaults(function) -> dict:
    """``function``'s keyword-only arguments and their defaults, read from its signature (their one owner): the
    defaults a command shows and passes on."""
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def add_fields(p: argparse.ArgumentParser, cls, names: typing.Sequence[str], helps: dict[str, str],
               **choices: typing.Sequence[str]) -> None:
    """An option per dataclass field in ``names``, with the field's default and a type from its annotation."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for name in names:
        default, hint = fields[name].default, hints[name]
        kind = (name_list if "tuple[str" in str(hint) else int_list if "tuple" in str(hint) else float if hint is float
                else str if "str" in str(hint) else int)
        if kind is int and name != "seed":
            kind = nonnegative_int if name in ZERO_MEANS_NONE else positive_int
        shown = (",".join(map(str, default)) or "none") if isinstance(default, tuple) else \
            "all the network supports" if default is None and "tuple[str" in str(hint) else default
        p.add_argument(flag(name), dest=name, type=kind, default=default, choices=choices.get(name),
                       help=f"{helps.get(name, name)} (default: {shown})")


def as_option(error: Exception, names: typing.Sequence[str],
              options: typing.Mapping[str, str] | None = None) -> Exception:
    """``error`` naming the command's option instead of the API's argument, when it is an ``ArgumentError``
    whose argument is one of ``names`` (option ``--name``, underscores as dashes) or a key of ``options``
    (``{"ig_steps": "--n-steps"}``); an index is kept (``widths[1]`` -> ``--widths[1]``). Every other error
    is returned as it is. The one place where the command line renames arguments."""
    renames = {**{n: flag(n) for n in names}, **(options or {})}
    if isinstance(error, NamedArgumentError) and error.base_name in renames:
        return error.renamed(renames[error.base_name])
    return error


def settings_from(cls, args, names: typing.Sequence[str]):
    """``cls(**fields)`` from parsed options; a field's error names its option."""
    try:
        return cls(**{n: getattr(args, n) for n in names})
    except (ValueError, TypeError) as e:
        raise as_option(e, names) from None


def add_model(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="FILE_OR_MODULE:ATTR",
                   help="your model: a .py file or dotted module and a zero-argument callable returning a "
                        "jaxviz.Network, (linen module, variables), an nnx.Module or (apply, variables, layer_names); "
                        "the file may set INPUT_SHAPE (default: the pretrained CIFAR-10 CNN)")
    g.add_argument("--input-shape", type=input_shape, metavar="H,W,C",
                   help="with --model: the input size, overriding the file's INPUT_SHAPE (default: INPUT_SHAPE, "
                        "else the size of the data's images)")
    g.add_argument("--weights", help="with --model: a Flax msgpack state dict of its variables; without: a weights "
                                     "file from `jaxviz train`")


def add_data(p: argparse.ArgumentParser, default_split: str = "test") -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", choices=DATA_CHOICES, default="sample",
                   help="sample: the embedded 1,000 CIFAR-10 test images (default); cifar10: the official archive "
                        "(from --data-dir or the cache, downloaded if missing); folder: DIR/<class>/*.png|jpg")
    g.add_argument("--data-dir", help="directory holding the CIFAR-10 archive/folder, or the image folder")
    g.add_argument("--split", choices=("train", "test"), default=default_split, help="CIFAR-10 split")
    g.add_argument("--layout", choices=("binary", "python"), default="binary", help="CIFAR-10 archive layout")
    g.add_argument("--no-download", action="store_true", help="never download CIFAR-10")
    g.add_argument("--resize", action="store_true",
                   help="resize images to the model's input size (bilinear) instead of refusing other sizes")


def load_network(args, default_input_shape=None) -> jaxviz.Network:
    """``--model`` (its input size: --input-shape, INPUT_SHAPE, else ``default_input_shape``: a shape or a
    callable returning one), else the built-in CNN of --weights or the pretrained one."""
    shape = getattr(args, "input_shape", None)
    if getattr(args, "model", None):
        return jaxviz.load_model(args.model, weights=args.weights, input_shape=shape,
                                 default_input_shape=default_input_shape)
    if shape is not None:
        raise ValueError(f"--input-shape: only with --model (the built-in CNN takes 32x32x3 images), got "
                         f"{','.join(map(str, shape))}")
    return (jaxviz.load_weights(args.weights) if args.weights else jaxviz.load_pretrained()).network


def load_data(args) -> jaxviz.Dataset:
    if args.data == "sample":
        return jaxviz.load_sample()
    if args.data == "folder":
        if not args.data_dir:
            raise ValueError("--data-dir: required with --data folder (a directory of class folders)")
        return jaxviz.load_image_folder(args.data_dir)
    return jaxviz.load_cifar10(args.split, data_dir=args.data_dir, layout=args.layout,
                               download=not args.no_download)


def load(args) -> tuple[jaxviz.Dataset, jaxviz.Network]:
    """The network, and the data in its classes (when it is a classifier), at its input size and in its
    channels: RGB becomes grayscale (``jaxviz.data.to_grayscale``) for a 1-channel model. A ``--model``
    without INPUT_SHAPE or --input-shape takes the size of the data's images (read first then)."""
    loaded = []

    def data_shape():
        loaded.append(load_data(args))
        return loaded[0].images.shape[1:]

    network = load_network(args, default_input_shape=data_shape)
    data = loaded[0] if loaded else load_data(args)
    if network.is_classifier:
        unknown = [c for c in data.class_names if c not in network.class_names]
        if unknown:
            raise ValueError(f"--data {args.data}: the data has classes {unknown} that the model does not know "
                             f"(the model's classes: {list(network.class_names)})")
        data = data.with_classes(network.class_names)
    h, w, c = network.input_spec.shape
    if c == 1 and data.images.shape[3] == 3:
        data = dataclasses.replace(data, images=to_grayscale(data.images))
    if data.images.shape[3] != c:
        raise ValueError(f"--data {args.data}: the model takes images with {c} channels; the data's images have "
                         f"{data.images.shape[3]} (RGB becomes grayscale for a 1-channel model; no other channel "
                         "conversion is made: check the model's INPUT_SHAPE or --input-shape)")
    if args.resize and data.images.shape[1:3] != (h, w):
        data = dataclasses.replace(data, images=jaxviz.resize_images(data.images, h, w))
    if data.images.shape[1:3] != (h, w):
        got = "x".join(map(str, data.images.shape[1:3]))
        raise ValueError(f"--data {args.data}: the model takes {h}x{w} images; got {got} images (pass --resize to "
                         "resize them)")
    return data, network


def model_outputs(network: jaxviz.Network, images, indices=None, *, layer: str | None = None,
                  progress: bool | str = False):
    """``layer``'s activations (default: the model's output) of ``images``: where the commands compute
    the outputs they predict from or explain, so that NaN or infinite ones stop every command with one
    line naming --model, the layer and the images (``indices``: their dataset indices)."""
    outputs = jaxviz.layer_features(network, images, layer=layer, progress=progress)
    network.check_finite(outputs, images, layer=layer, indices=indices, name="--model")
    return outputs


def check_writable(path: str | os.PathLike, *, directory: bool, option: str) -> Path:
    """Fail before any work if ``path`` cannot be written later; create nothing.

    A directory target may exist (it must be a writable directory) or not (its
    nearest existing parent must be a writable directory); a file target must
    not be a directory and its parent must be, or be creatable, likewise.
    """
    path = Path(path)
    if path.exists():
        if directory and not path.is_dir():
            raise NotADirectoryArgumentError(f"{option}: expected a directory, but {str(path)!r} is a file")
        if not directory and path.is_dir():
            raise IsADirectoryError(f"{option}: expected a file name, but {str(path)!r} is a directory")
        target = path if directory else path.parent
    else:
        target = path.parent
    while not target.exists():
        target = target.parent
    if not target.is_dir():
        raise NotADirectoryArgumentError(f"{option}: cannot create {str(path)!r}: {str(target)!r} is a file")
    if not os.access(target, os.W_OK | os.X_OK):
        raise PermissionError(f"{option}: cannot write {str(path)!r}: {str(target)!r} is not writable")
    return path
