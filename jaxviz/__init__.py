"""jaxviz: what did this CNN learn? Occlusion and unit analysis in JAX, on any Flax model.

The package is layered; data flows one way and a layer imports only those before it::

    data      uint8 image datasets: folders, the embedded sample, CIFAR-10 archives, concept images
    models    Network (the one model interface) and its adapters; the built-in CNN,
              its weights and training
    engine    evaluating a network on many inputs: layer activations, the perturbation
              engine (masks made on the device), the gradient engine, chunk planning
    methods   attribution methods, one module each (occlusion, RISE, feature ablation,
              saliency, input x gradient, integrated gradients, SmoothGrad, Grad-CAM),
              and the registry (``METHODS``) that every caller reads
    evaluation  faithfulness metrics, the randomization sanity check, method comparison
    runs      a perturbation method over a whole dataset: streamed to a zarr store,
              resumable, across processes with jax.distributed
    analysis  top-K, unit selectivity, masks, filters, t-SNE, classification metrics, CKA between
              layers, TCAV concepts
    report    figures (the only matplotlib user, imported lazily) and the HTML report
    atlas     a static site of every unit of chosen layers (beside report: it reuses its folder swap)
    cli       the ``jaxviz`` command

Every analysis takes a ``Network``: ``load_pretrained().network`` for the
built-in CIFAR-10 CNN, ``from_linen``/``from_nnx``/``from_function`` for yours.
"""

from jaxviz._batching import map_batches
from jaxviz._io import atomic_path, atomic_write_bytes
from jaxviz._version import __version__ as __version__  # the one version number
from jaxviz.analysis.cka import CKA, cka
from jaxviz.analysis.embedding import Embedding, knn_agreement, tsne
from jaxviz.analysis.filters import filter_grid
from jaxviz.analysis.looks_for import UnitVisualizations, visualize_with_exemplars
from jaxviz.analysis.masks import apply_mask, heatmap_mask, normalize
from jaxviz.analysis.metrics import (
    ClassificationReport,
    ConfusedPair,
    classification_report,
    confusion_matrix,
    most_confused_pairs,
)
from jaxviz.analysis.tcav import TCAV, tcav
from jaxviz.analysis.topk import TopK, top_k_images, unit_scores
from jaxviz.analysis.unit_occlusion import UnitOcclusion, occlude_top_images
from jaxviz.analysis.units import (
    ClassSelectivity,
    Selectivity,
    SimilarUnits,
    UnitPair,
    UnitStudy,
    active_in_top_k,
    class_selectivity,
    per_unit,
    pick_units,
    similar_units,
    study_units,
    unit_selectivity,
)
from jaxviz.atlas.build import Atlas, build_atlas
from jaxviz.data import CIFAR10_CLASSES, Dataset, cache_dir, load_cifar10, load_image_folder, load_sample
from jaxviz.data.concepts import load_concept_folder, procedural_concepts
from jaxviz.engine.activations import activation_maps, layer_features
from jaxviz.evaluation.comparison import MethodComparison, attribute, compare_methods
from jaxviz.evaluation.faithfulness import Curve, MuFidelity, deletion_curve, insertion_curve, mu_fidelity
from jaxviz.evaluation.sanity import SanityCheck, randomization_test
from jaxviz.methods.ablation import Ablation, feature_ablation, grid_segments, slic_segments
from jaxviz.methods.base import Attribution, Method
from jaxviz.methods.gradcam import GradCam, grad_cam
from jaxviz.methods.gradients import (
    Gradients,
    input_x_gradient,
    integrated_gradients,
    saliency,
    smoothgrad,
)
from jaxviz.methods.occlusion import Occlusion, occlude, occlude_one, unit_indices, window_spans
from jaxviz.methods.registry import METHODS
from jaxviz.methods.rise import Rise, rise, rise_masks
from jaxviz.models.adapters import from_cnn, from_function, from_linen, from_nnx
from jaxviz.models.checkpoint import check_output_file, prepare_checkpoint_dir
from jaxviz.models.cnn import CNN, forward, init_variables
from jaxviz.models.loading import load_model, load_variables
from jaxviz.models.network import InputSpec, LayerInfo, Network, resize_images
from jaxviz.models.train import TrainConfig, TrainingDiverged, augment, train
from jaxviz.models.weights import (
    PRETRAINED_FILE,
    Weights,
    load_pretrained,
    load_weights,
    pretrained_sha256,
    save_weights,
)
from jaxviz.report import plots
from jaxviz.report.folder import check_report_dir
from jaxviz.report.page import ReportSettings, make_report
from jaxviz.report.render import jsonable
from jaxviz.report.settings import check_against as check_report_settings
from jaxviz.runs.dataset_run import run_dataset
from jaxviz.runs.distributed import initialize_distributed
from jaxviz.runs.reader import Run, open_run
from jaxviz.runs.store import RunStoreError
from jaxviz.visualization.visualize import Visualization, visualize

__all__ = [
    "METHODS", "Attribution", "Method", "attribute", "Run", "RunStoreError", "initialize_distributed", "open_run", "run_dataset",
    "GradCam", "Gradients", "SanityCheck", "grad_cam", "input_x_gradient",
    "integrated_gradients", "randomization_test", "saliency", "smoothgrad",
    "Ablation", "Curve", "MethodComparison", "MuFidelity", "Rise", "compare_methods", "deletion_curve",
    "feature_ablation", "grid_segments", "insertion_curve", "mu_fidelity", "rise", "rise_masks", "slic_segments",
    "CIFAR10_CLASSES", "CNN", "ClassificationReport", "PRETRAINED_FILE", "ConfusedPair", "Dataset", "Embedding", "InputSpec", "LayerInfo",
    "Network", "Occlusion", "ReportSettings", "Selectivity", "SimilarUnits", "TopK", "TrainConfig", "TrainingDiverged", "UnitOcclusion",
    "UnitPair", "UnitStudy", "Weights", "activation_maps", "active_in_top_k", "apply_mask", "atomic_path",
    "atomic_write_bytes", "augment", "cache_dir", "check_output_file", "check_report_dir",
    "check_report_settings", "jsonable", "prepare_checkpoint_dir", "classification_report", "confusion_matrix", "filter_grid",
    "forward", "from_cnn", "from_function", "from_linen", "from_nnx", "heatmap_mask", "init_variables",
    "knn_agreement", "layer_features", "load_cifar10", "load_image_folder", "load_model", "load_pretrained",
    "load_sample", "load_variables", "load_weights", "make_report", "map_batches", "most_confused_pairs",
    "normalize", "occlude", "occlude_one", "occlude_top_images", "per_unit", "pick_units", "plots",
    "pretrained_sha256", "resize_images", "save_weights", "similar_units", "study_units", "top_k_images", "train",
    "tsne", "unit_indices", "unit_scores", "unit_selectivity", "window_spans",
    "UnitVisualizations", "Visualization", "visualize", "visualize_with_exemplars",
    "Atlas", "ClassSelectivity", "build_atlas", "class_selectivity",
    "CKA", "TCAV", "cka", "load_concept_folder", "procedural_concepts", "tcav",
]
