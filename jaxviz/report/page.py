"""``make_report``: every analysis of the teaching notebook in one HTML page, for any network.

Writes into ``out_dir``: ``index.html`` (self-contained: figures embedded,
each also linked to its PNG), the PNGs, and ``results.json`` with every
number. Nothing is written before every setting has been checked, against
the data and the network too; the folder is then written whole or not at all
(``jaxviz.report.folder``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from jaxviz.checks import ArgumentTypeError
from jaxviz.data.images import Dataset, load_sample
from jaxviz.models.network import Network
from jaxviz.models.weights import load_pretrained
from jaxviz.report.analyses import analyse, prepare
from jaxviz.report.folder import check_report_dir, write_folder
from jaxviz.report.render import render
from jaxviz.report.settings import MAX_UNITS, ReportSettings

__all__ = ["MAX_UNITS", "ReportSettings", "make_report"]


def make_report(out_dir: str | os.PathLike, *, network: Network | None = None, dataset: Dataset | None = None,
                settings: ReportSettings | None = None, progress: bool = True) -> dict:
    """Run every analysis and write ``out_dir/index.html``, the PNGs and ``results.json``.

    ``out_dir`` must be absent, empty or an earlier jaxviz report (which is
    replaced whole); a folder holding anything else is refused, never deleted.

    Args:
      out_dir: output directory.
      network: the model (default: the pretrained CIFAR-10 CNN, ``load_pretrained().network``).
      dataset: uint8 images of the network's input size, with labels (default: ``load_sample()``);
        for a classifier, its classes must be among the network's.
      settings: what to compute (default ``ReportSettings()``; its ``layer`` None: the layer before the output).
      progress: progress bars per stage.

    Returns:
      The ``results.json`` content.

    Raises:
      TypeError / ValueError naming the argument or setting, FileExistsError /
      NotADirectoryError / PermissionError for the folder, BlockingIOError when
      another report is writing it; all before anything is written.
    """
    settings = ReportSettings() if settings is None else settings
    if not isinstance(settings, ReportSettings):
        raise ArgumentTypeError("settings", f"expected a ReportSettings, got {type(settings).__name__}")
    if network is not None and not isinstance(network, Network):
        raise ArgumentTypeError("network", f"expected a jaxviz.Network (e.g. load_pretrained().network, from_linen(...)) "
                        f"or None, got {type(network).__name__}")
    if dataset is not None and not isinstance(dataset, Dataset):
        raise ArgumentTypeError("dataset", f"expected a Dataset or None, got {type(dataset).__name__}")
    if not isinstance(progress, (bool, np.bool_)):
        raise ArgumentTypeError("progress", f"expected True or False, got {progress!r} ({type(progress).__name__})")
    check_report_dir(out_dir)
    network = load_pretrained().network if network is None else network
    dataset = prepare(network, load_sample() if dataset is None else dataset, settings)

    def write(tmp: Path) -> dict:
        return render(analyse(network, dataset, settings, progress=progress), tmp)

    return write_folder(out_dir, write)
