"""jaxviz: what did this CNN learn? Occlusion and unit analysis in JAX, fast.

Layers, in the one direction data flows::

    data, cifar10 -> model, weights, train -> features, occlusion
      -> units, embedding, metrics, masks, filters -> plots -> report -> cli

Only ``jaxviz.plots`` imports matplotlib, and only when a plot is drawn;
scikit-learn, SciPy, Pillow and tqdm are imported where they are used.
"""

from jaxviz._io import atomic_path, atomic_write_bytes
from jaxviz.batching import map_batches
from jaxviz.cifar10 import cache_dir, load_cifar10
from jaxviz.data import CIFAR10_CLASSES, Dataset, load_image_folder, load_sample, to_model_input
from jaxviz.embedding import Embedding, knn_agreement, tsne
from jaxviz.features import TopK, activation_maps, layer_features, top_k_images, unit_scores
from jaxviz.filters import filter_grid
from jaxviz.masks import apply_mask, heatmap_mask, normalize
from jaxviz.metrics import classification_report, confusion_matrix, most_confused_pairs
from jaxviz.model import (
    CNN,
    check_images_fit,
    conv_kernels,
    forward,
    init_variables,
    layer_fn,
    layer_names,
    summary,
    summary_table,
)
from jaxviz.occlusion import Occlusion, occlude, occlude_one, unit_indices, window_spans
from jaxviz.report import ReportSettings, make_report
from jaxviz.train import TrainConfig, augment, predict, train
from jaxviz.units import (
    Selectivity,
    UnitPair,
    UnitStudy,
    active_in_top_k,
    per_unit,
    pick_units,
    similar_units,
    study_units,
    unit_selectivity,
)
from jaxviz.weights import PRETRAINED_FILE, Weights, load_pretrained, load_weights, pretrained_sha256, save_weights

__version__ = "0.1.0"

__all__ = [
    "CIFAR10_CLASSES", "CNN", "active_in_top_k", "check_images_fit", "Dataset", "Embedding", "Occlusion", "PRETRAINED_FILE", "Selectivity", "TopK",
    "ReportSettings", "TrainConfig", "UnitPair", "UnitStudy", "per_unit", "study_units", "Weights", "activation_maps", "apply_mask", "atomic_path", "atomic_write_bytes", "augment", "cache_dir",
    "classification_report", "confusion_matrix", "conv_kernels", "filter_grid", "forward", "heatmap_mask",
    "init_variables", "knn_agreement", "layer_features", "layer_fn", "layer_names", "load_cifar10",
    "load_image_folder", "load_pretrained", "load_sample", "load_weights", "make_report", "map_batches",
    "most_confused_pairs", "normalize", "occlude", "occlude_one", "pick_units", "predict",
    "pretrained_sha256", "save_weights", "similar_units", "summary", "summary_table", "to_model_input",
    "top_k_images", "train", "tsne", "unit_indices", "unit_scores", "unit_selectivity", "window_spans",
]
