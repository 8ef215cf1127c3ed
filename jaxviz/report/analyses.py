"""The report's computations: every analysis of the notebook, as one typed result.

``analyse(network, dataset, settings)`` runs them in order and times each;
``render`` turns the result into HTML, PNGs and JSON. Nothing here writes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np

from jaxviz._progress import progress_bar
from jaxviz.analysis.cka import CKA, MIN_BATCH, cka
from jaxviz.analysis.embedding import Embedding, knn_agreement, tsne
from jaxviz.analysis.looks_for import UnitVisualizations, visualize_with_exemplars
from jaxviz.analysis.metrics import ClassificationReport, classification_report
from jaxviz.analysis.tcav import TCAV, tcav
from jaxviz.analysis.topk import unit_scores
from jaxviz.analysis.unit_occlusion import UnitOcclusion, occlude_top_images
from jaxviz.analysis.units import SimilarUnits, UnitStudy, similar_units, study_units
from jaxviz.data.images import Dataset
from jaxviz.engine.activations import layer_features
from jaxviz.evaluation.comparison import MethodComparison, compare_methods
from jaxviz.evaluation.sanity import SanityCheck, randomization_test
from jaxviz.models.network import Network
from jaxviz.report.settings import (
    ReportSettings,
    check_against,
    cka_layers,
    runs_tcav,
    sanity_methods,
    study_layer,
    tcav_layers,
    trust_methods,
)

__all__ = ["ReportResults", "analyse"]

STAGES = ("evaluate", "filters", "activations", "features", "top-k", "occlusion", "visualization", "trust", "sanity",
          "t-SNE", "CKA", "TCAV")
TCAV_IMAGES = 50  # images per class the report's TCAV scores (the first of each class)
REPORT_CAV = "mean_difference"  # FastCAV: a first look without fitting (jaxviz tcav fits the paper's classifiers)


@dataclasses.dataclass(frozen=True)
class ReportResults:
    """Everything the report shows.

    Attributes:
      settings: what was computed; ``layer`` is the studied layer (resolved).
      network, dataset: the model and the data (labels in the model's classes
        when it is a classifier).
      evaluation: accuracy and confusions; ``None`` when the network has no class names.
      kernels: the first (up to) two conv layers' kernels, layer -> (kh, kw, in, out).
      activation_images: dataset indices of the images in the activation-map figures.
      activations: conv layer -> (n, h, w, channels) maps of those images.
      study: top-K, selectivity and the shown units of ``layer``.
      similar: the unit pairs with overlapping top-K sets and correlated activations.
      occlusion: the shown units' top images, occluded.
      looks_for: the shown units' feature visualizations beside their top-K images (``None`` when
        ``settings.vis_steps`` is 0, or every shown unit is dead on the data).
      trust_images: dataset indices of the images whose maps ``trust`` compares.
      trust: the ``trust_methods``' maps of those images (their predicted class for a
        classifier, else the first shown unit of ``layer``) and their faithfulness.
      sanity_images: dataset indices of the randomization test's images.
      sanity: the randomization test of the ``sanity_methods`` (``None`` when there are none).
      embedding: t-SNE of ``layer``'s unit scores.
      knn: float (classes,): per class, the share of 10 nearest t-SNE neighbours of the same class.
      layers: linear CKA between every pair of ``cka_layers`` over the dataset (``None`` when ``cka_batch`` is 0 or
        the dataset has fewer than 4 images).
      concepts: TCAV of the built-in concepts for every class at ``tcav_layers``, with FastCAV's mean-difference
        CAVs (``None`` when ``tcav_runs`` is 0,
        or the network is no classifier or has no gradient at a layer).
      timings: seconds per stage.
    """

    settings: ReportSettings
    layer: str
    network: Network
    dataset: Dataset
    evaluation: ClassificationReport | None
    kernels: dict
    activation_images: np.ndarray
    activations: dict
    study: UnitStudy
    similar: SimilarUnits
    occlusion: UnitOcclusion
    looks_for: UnitVisualizations | None
    trust_images: np.ndarray
    trust: MethodComparison
    sanity_images: np.ndarray
    sanity: SanityCheck | None
    embedding: Embedding
    knn: np.ndarray
    layers: CKA | None
    concepts: TCAV | None
    timings: dict


def prepare(network: Network, dataset: Dataset, settings: ReportSettings) -> Dataset:
    """The dataset with labels in the network's classes (when it is a classifier), after every check."""
    if network.is_classifier:
        dataset = dataset.with_classes(network.class_names)
    check_against(settings, network, dataset)
    return dataset


def analyse(network: Network, dataset: Dataset, settings: ReportSettings, *, progress: bool = False,
            on_stage: Callable[[str], None] | None = None) -> ReportResults:
    """Run every analysis (``prepare`` must have been called on ``dataset``).

    Args:
      network: the model.
      dataset: uint8 images of the network's input size, with labels.
      settings: what to compute.
      progress: a progress bar over the stages (and per stage).
      on_stage: called with each stage's name when it is done.
    """
    s, layer, timings = settings, study_layer(settings, network), {}
    classes = len(dataset.class_names)
    bar = progress_bar(total=len(STAGES), desc="report", disable=not progress, unit="stage")
    clock = [time.perf_counter()]

    def done(stage: str) -> None:
        now = time.perf_counter()
        timings[stage], clock[0] = now - clock[0], now
        bar.set_postfix(stage=stage)
        bar.update(1)
        if on_stage is not None:
            on_stage(stage)

    evaluation = None
    if network.is_classifier:
        logits = layer_features(network, dataset.images, progress=progress and "evaluate")
        network.check_finite(logits, dataset.images)  # an argmax of NaN would read as class 0
        evaluation = classification_report(dataset.labels, logits, network.class_names)
    done("evaluate")

    convs = network.conv_layers()[:2]
    kernels = {n: network.kernel(n) for n in convs}
    done("filters")

    first_of_class = [np.flatnonzero(dataset.labels == c)[0] for c in np.unique(dataset.labels)]
    shown = np.asarray(first_of_class[: s.activation_images], np.int64)
    activations = {n: layer_features(network, dataset.images[shown], layer=n) for n in convs}
    done("activations")

    features = layer_features(network, dataset.images, layer=layer, progress=progress and "features")
    network.check_finite(features, dataset.images, layer=layer)
    scores = unit_scores(features)
    done("features")

    study = study_units(scores, dataset.labels, classes, k=s.k, count=s.num_units, units=s.units)
    similar = similar_units(study.top.indices, scores, top=8)
    done("top-k")

    occlusion = occlude_top_images(network, study, dataset.images, layer=layer, window=s.window, stride=s.stride,
                                   anchor=s.anchor, threshold=s.threshold, sigma=s.sigma)
    done("occlusion")

    looks_for = None
    if s.vis_steps and study.alive[list(study.units)].any():
        looks_for = visualize_with_exemplars(network, layer, study.top, dataset.labels, classes, study.units,
                                             steps=s.vis_steps, seed=s.seed, progress=progress)
    done("visualization")

    explained = np.asarray(first_of_class[: s.trust_images], np.int64)
    common = {"methods": trust_methods(s, network), "window": s.window, "stride": s.stride, "num_masks": s.rise_masks,
              "seed": s.seed}
    if network.is_classifier:
        trust = compare_methods(network, dataset.images[explained], **common)
    else:
        trust = compare_methods(network, dataset.images[explained], layer=layer,
                                targets=np.full(len(explained), study.units[0]), **common)
    done("trust")

    sanity_images = np.asarray(first_of_class[: s.sanity_images], np.int64)
    checked = sanity_methods(s, network)
    sanity = randomization_test(network, dataset.images[sanity_images], methods=checked,
                                seed=s.seed) if checked else None
    done("sanity")

    points = min(s.tsne_points, len(dataset))
    embedding = tsne(scores, perplexity=min(s.perplexity, (points - 1) / 3), max_iter=s.tsne_iter, seed=s.seed,
                     subsample=s.tsne_points)
    knn = knn_agreement(embedding.coords, dataset.labels[embedding.indices], classes,
                        k=min(10, len(embedding.indices) - 1))
    done("t-SNE")

    layers = None
    if s.cka_batch and len(dataset) >= MIN_BATCH:
        layers = cka(network, dataset.images, cka_layers(network), batch_size=s.cka_batch, seed=s.seed)
    done("CKA")

    concepts = None
    if runs_tcav(s, network):
        present = np.unique(dataset.labels)
        scored = np.concatenate([np.flatnonzero(dataset.labels == c)[:TCAV_IMAGES] for c in present])
        concepts = tcav(network, None, [int(c) for c in present], tcav_layers(s, network),
                        images=dataset.images[scored], labels=dataset.labels[scored], random_images=dataset.images,
                        runs=s.tcav_runs, cav=REPORT_CAV, seed=s.seed)
    done("TCAV")
    bar.close()
    return ReportResults(s, layer, network, dataset, evaluation, kernels, shown, activations, study, similar,
                         occlusion, looks_for, explained, trust, sanity_images, sanity, embedding, knn, layers,
                         concepts, timings)
