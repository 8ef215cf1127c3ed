"""Write notebooks/what_did_the_cnn_learn.ipynb from the cells below, and execute it in place.

    python tools/make_notebook.py [--no-execute]

The notebook walks through the teaching session (../shared/reference/
seed-notebook.txt) with jaxviz's public API, on the pretrained model and the
embedded sample. Executing needs the test extras (nbclient, ipykernel).
"""

import argparse
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

PATH = Path(__file__).resolve().parents[1] / "notebooks" / "what_did_the_cnn_learn.ipynb"

CELLS = [
    ("md", """# What did this CNN learn?

The teaching session in JAX with **jaxviz**: we load a CNN trained on CIFAR-10, look at its first- and
second-layer filters and their activation maps, build a feature extractor at the fully connected layer,
find the images each unit likes most, measure how class-selective units are, slide an occluder over those
images to see which parts drive each unit, draw what each unit looks for, and embed the features with t-SNE. Then we ask which
attribution map to trust, perturbation and gradient methods side by side, whether the maps pass the
randomization sanity check, how the layers relate (CKA) and which concepts matter for a class (TCAV).

Everything runs on the CPU in a few minutes, on the 1,000 CIFAR-10 test images shipped with jaxviz."""),
    ("code", """%matplotlib inline
import matplotlib.pyplot as plt  # registers the inline display of figures
import numpy as np
import jaxviz
from jaxviz.report import plots"""),
    ("md", """## The model

`load_pretrained()` reads the weights shipped inside the package (offline, SHA-256 checked). Every analysis
takes a `jaxviz.Network`: `weights.network` is the pretrained CNN as one. Its summary is Keras'
`model.summary()`: every layer has a name, and any name can be used as a feature extractor."""),
    ("code", """weights = jaxviz.load_pretrained()
net = weights.network                # layer names, a pure truncated apply, the input spec, kernels
class_names = net.class_names
print(net.summary_table())
print("test accuracy recorded with the weights:", weights.metadata["test_accuracy"])"""),
    ("code", """data = jaxviz.load_sample()          # uint8 (1000, 32, 32, 3), 100 test images per class
# full test set instead: data = jaxviz.load_cifar10("test")  (downloads once), or jaxviz.load_image_folder(DIR)
data.images.shape, data.class_names"""),
    ("md", """## Filters of the first conv layer

The notebook's `model.layers[0].get_weights()[0]`: kernels of shape (3, 3, in, out). Kernels with three
input channels are shown as RGB, each normalized to [0, 1]."""),
    ("code", """kernels = net.kernel("conv1")
print(kernels.shape)
plots.plot_filters(*jaxviz.filter_grid(kernels), title="conv1 kernels")"""),
    ("md", """**Exercise: the second conv layer.** Its kernels have 32 input channels; each cell shows their mean
over input channels, in gray."""),
    ("code", """plots.plot_filters(*jaxviz.filter_grid(net.kernel("conv2")), title="conv2 kernels")"""),
    ("md", """## Activation maps

The notebook leaves "display the activations of these filters when convolved with an image" as homework.
Bright pixels are where a channel responds."""),
    ("code", """some = data.subset([0, 100, 300, 700]).images   # an airplane, a car, a cat, a horse
plots.plot_activation_maps(some, jaxviz.activation_maps(net, some, layer="conv1"), layer="conv1")"""),
    ("code", """plots.plot_activation_maps(some, jaxviz.activation_maps(net, some, layer="conv2"), layer="conv2")"""),
    ("md", """## A feature extractor at the fully connected layer

`fc1` is the last layer before the classifier (`net.feature_layer`). `layer_features` runs the network up
to it (later layers are not computed) in fixed-size batches with one compiled program, converting the
uint8 pixels to model input inside it."""),
    ("code", """feats = jaxviz.layer_features(net, data.images, layer="fc1")
feats.shape"""),
    ("md", """## Top-K images per unit

For every unit, the K images with the highest activation (`jax.lax.top_k`, ties to the lower index)."""),
    ("code", """top = jaxviz.top_k_images(feats, 10)
top.indices.shape   # (K, units): the notebook's idxs_top10"""),
    ("md", """## Do units respond to distinguishable concepts?

Selectivity of a unit = share of the majority class among its top-10 images (1.0: all of one class, 0.1:
no preference). `study_units` does top-K, selectivity and the choice of units to show in one call: the most
selective live units, one per class first."""),
    ("code", """study = jaxviz.study_units(feats, data.labels, len(class_names), k=10, count=5)
sel, units = study.selectivity, list(study.units)
print(f"{(~study.alive).sum()} of {feats.shape[1]} units never fire on these images")
print(f"mean selectivity of live units: {sel.score[study.alive].mean():.2f}; "
      f"{(sel.score[study.alive] >= 0.5).mean():.0%} have a majority class of at least half")
for u in units:
    print(f"unit {u:3d}: {sel.score[u]:.0%} {class_names[sel.majority_class[u]]}")"""),
    ("code", """shown = study.top.indices[:, units]               # the same top-K as above
plots.plot_top_k(data.images[shown], units, labels=data.labels[shown], class_names=class_names,
                title="Top 10 images of five fc1 units")"""),
    ("code", """plots.plot_selectivity(sel.histogram[units], units, class_names)"""),
    ("md", """## Are there units that respond to similar things?

Pairs of units whose top-10 sets overlap most (Jaccard index), and whose activations over all images
correlate most."""),
    ("code", """pairs = jaxviz.similar_units(study.top.indices, feats, top=5)
for kind, found in (("overlapping top-10 sets", pairs.overlap), ("correlated activations", pairs.correlated)):
    print(kind)
    for p in found:
        print(f"  units {p.a:3d} & {p.b:3d}: overlap {p.jaccard:.2f}, correlation {p.correlation:.2f}")"""),
    ("md", """## Which image parts drive each unit? Occlusion

An 11x11 black occluder slides with stride 4 over each unit's top-10 images. `occlude_top_images` runs
`jaxviz.occlude`, which evaluates every position of every image as one compiled, vmapped batch and returns,
for all shown units at once, `grid = activation(original) - activation(occluded)`: positive where hiding
the region lowers the unit. Each image keeps the map of its own unit, regrouped as (K, units)."""),
    ("code", """occ = jaxviz.occlude_top_images(net, study, data.images, layer="fc1", window=11, stride=4,
                               threshold=0.5, sigma=2)
occ.images.shape, occ.heatmaps.shape      # (10 images, 5 units, ...), (10, 5, 7, 7) positions"""),
    ("code", """# a few of the occluded copies of the first image, as the notebook shows them
x = net.to_input(occ.images[0, :1])[0]     # model input: pixels / 255
copies = np.stack([[np.asarray(jaxviz.occlude_one(x, 0.0, np.array([r0, r1, c0, c1])))
                    for c0, c1 in occ.occlusion.col_spans] for r0, r1 in occ.occlusion.row_spans])
plots.plot_occluded_examples(copies)"""),
    ("code", """plots.plot_masked(occ.masked, units)"""),
    ("code", """plots.plot_heatmaps(occ.images, occ.pixel, units)"""),
    ("md", """## What does each unit look for? Feature visualization

Top-K images show what a unit responds to *in the data*; feature visualization asks the unit itself: start
from a random image and follow the gradient to the image that excites the unit most (Olah et al., Distill
2017). `jaxviz.visualize` does it for many units at once in one compiled program: a decorrelated Fourier
parameterization, random jitter, scale and rotation at every step, optax Adam. Such pictures can mislead, so
`visualize_with_exemplars` puts two numbers beside each: the **exemplar ratio** (the activation the picture
reaches over the unit's best image of the data; above 1 it excites the unit more than any of them) and the
class the network **predicts for the picture**, beside the majority class of the unit's top-10. Here 128
steps per unit, a quarter of `visualize`'s default."""),
    ("code", """looks = jaxviz.visualize_with_exemplars(net, "fc1", study.top, data.labels, len(class_names), units, steps=128)
for u, ratio, pred, major in zip(looks.units, looks.exemplar_ratio, looks.predicted_class[:, 0], looks.majority_class):
    print(f"unit {u:3d}: x{ratio:.1f} its best image; the picture is classified as {class_names[pred]}, "
          f"its top-10 images are mostly {class_names[major]}")
plots.plot_visualizations(looks.visualization.images, looks.units, notes=looks.notes(class_names),
                          title="What five fc1 units look for")"""),
    ("md", """## t-SNE of the features

scikit-learn's `TSNE` with PCA initialisation and a fixed seed (its current parameter is `max_iter`; the
notebook's `n_iter` is gone)."""),
    ("code", """emb = jaxviz.tsne(feats, max_iter=1000, seed=0)
print(f"t-SNE of {len(emb.indices)} points took {emb.seconds:.1f} s")
plots.plot_tsne(emb.coords, data.labels[emb.indices], class_names)"""),
    ("md", """## What categories are easier? Which are confusing?"""),
    ("code", """logits = jaxviz.layer_features(net, data.images)   # the output layer: the notebook's model.predict
report = jaxviz.classification_report(data.labels, logits, class_names)
knn = jaxviz.knn_agreement(emb.coords, data.labels[emb.indices], len(class_names))
print(f"accuracy {report.accuracy:.1%}")
for (name, acc), agree in zip(report.per_class_accuracy.items(), knn):
    print(f"  {name:<11} accuracy {acc:.2f}   same-class t-SNE neighbours {agree:.2f}")
print("most confused:", [(p.a, p.b, p.count) for p in report.most_confused])"""),
    ("code", """plots.plot_confusion(report.confusion_matrix, class_names)"""),
    ("md", """## Which map to trust?

Occlusion is one of a family of perturbation methods, all run on the same fused engine (masks made on the
device, every output at once): RISE averages the output over random masks, feature ablation removes one
segment at a time. Faithfulness metrics score any map: the deletion curve removes pixels in the map's order
(a faithful map makes the output drop fast: low AUC), the insertion curve reveals them (high AUC), and
MuFidelity correlates the map's sums over random cell subsets with the output drop when they are removed.
`compare_methods` scores the gradient methods of the next section too."""),
    ("code", """explained = data.images[[0, 100, 200, 300]]         # one image of each of four classes
x = net.to_input(explained)
logits = jaxviz.layer_features(net, explained)
targets = logits.argmax(-1)                              # explain each image's predicted class
rows = np.arange(len(targets))
rise_maps = jaxviz.rise(net.layer_fn("logits"), x, params=net.variables, num_masks=2000, seed=0).maps
ablation = jaxviz.feature_ablation(net.layer_fn("logits"), x, params=net.variables,
                                   segments=jaxviz.grid_segments(32, 32, cells=8))
print(rise_maps.shape, ablation.scores.shape)            # (4, 32, 32, 10): every class at once; (4, 64, 10)
deletion = jaxviz.deletion_curve(net.layer_fn("logits"), x, rise_maps[rows, ..., targets], steps=50,
                                 params=net.variables, targets=targets)
print("RISE deletion AUC per image (logits):", np.round(deletion.auc, 3))"""),
    ("code", """comparison = jaxviz.compare_methods(net, explained)   # softmax of the predicted class, all eight methods, three metrics
for method, means in comparison.means().items():
    print(f"{method:<17}", {k: round(v, 3) for k, v in means.items()})
print(comparison.sentence())
plots.plot_attribution_maps(explained, comparison.maps, titles=[class_names[t] for t in comparison.targets])"""),
    ("md", """## Gradient attributions

Perturbation methods run the model forward many times per image (RISE above: once per mask). Gradient methods
explain with one backward pass: **saliency** is |d output / d pixel|, **integrated gradients** averages the
gradient along the straight path from a black baseline to the image and multiplies by the difference, so
its attributions sum to `f(x) - f(baseline)` (the convergence `delta` measures how far off they are),
**SmoothGrad** averages saliency over noisy copies, and **Grad-CAM** weighs the channels of the last conv
layer by their mean gradient. Here each image's predicted class (its logit) is explained."""),
    ("code", """f = net.layer_fn("logits")                              # f(variables, x)
x = net.to_input(explained)                              # the four images above; targets: their predictions
sal = jaxviz.saliency(f, x, params=net.variables, targets=targets)
ig = jaxviz.integrated_gradients(f, x, baselines=0.0, n_steps=50, params=net.variables, targets=targets)
sg = jaxviz.smoothgrad(f, x, nt_samples=25, stdevs=0.15, seed=0, params=net.variables, targets=targets)
cam = jaxviz.grad_cam(net, x, targets=targets)          # at net's last conv layer by default
print(sal.attributions.shape, cam.attributions.shape, "Grad-CAM layer:", cam.layer)
gap = ig.attributions.sum(axis=(1, 2, 3)) - ig.delta    # f(x) - f(baseline)
print("integrated gradients: f(x) - f(baseline)", np.round(gap, 3), " delta", np.round(ig.delta, 3))
plots.plot_attribution_maps(explained, {"saliency": sal.pixel_map(), "integrated gradients": ig.pixel_map(),
                                        "SmoothGrad": sg.pixel_map(), "Grad-CAM": cam.attributions},
                            titles=[class_names[t] for t in targets], title="Gradient attributions")"""),
    ("md", """Without `targets` (or `units`), every output is kept: one forward pass and a vmapped backward pass per
output, all in one compiled program. Here Grad-CAM of every `fc1` unit for two images, and the maps of
the units that respond most to both."""),
    ("code", """cams = jaxviz.grad_cam(net, x[:2], output_layer="fc1")
print(cams.attributions.shape)                           # (images, H, W, every fc1 unit)
fc1 = jaxviz.layer_features(net, explained[:2], layer="fc1")
strong = np.argsort(-fc1.min(axis=0))[:4]                # the units most active on both images
plots.plot_attribution_maps(explained[:2], {f"unit {u}": cams.attributions[..., u] for u in strong},
                            titles=[class_names[t] for t in targets[:2]], title="Grad-CAM of fc1 units")"""),
    ("md", """## Sanity check: do the maps depend on what the model learned?

Adebayo et al. (2018, "Sanity Checks for Saliency Maps") randomize the model's layers, from the top down
(cascading), and compare each method's map on the trained model with its map on the randomized one. A map
that barely changes when the weights are destroyed explains the input (edges, say), not the model: a
method passes when the Spearman correlation falls towards 0."""),
    ("code", """images8 = data.images[::100][:8]                         # one image of each of eight classes
check = jaxviz.randomization_test(net, images8, methods=("saliency", "ig", "gradcam"), mode="cascading", seed=0)
print("randomized, top first:", check.layers)
print(check.sentence())"""),
    ("code", """plots.plot_sanity(check.layers, {check.labels[m]: v for m, v in check.mean().items()},
                  mode=check.mode, threshold=0.5)"""),
    ("md", """## How the layers relate, and which concepts matter

Two questions about whole layers. **CKA** (centered kernel alignment, Kornblith et al. 2019) compares what two
layers represent over the same images: 1 for the same representation up to a rotation and a scale. jaxviz
streams it in minibatches (Nguyen et al. 2021), every pair of layers from one forward pass.

**TCAV** (Kim et al. 2018) asks whether a class's logit rises when a layer's activations move toward a human
concept. The concept is a set of images (here the built-in procedural stripes, dots, checkerboards and red);
its direction is fitted against random images many times, and each score is tested against random
directions: a result that could be chance is shown as n.s., not as a score."""),
    ("code", """layers = jaxviz.cka(net, data.images, batch_size=250)          # every pair of the 12 layers, seeded order
print(layers.table(digits=1))
plots.plot_cka(layers.matrix, layers.layers, layers.other_layers)"""),
    ("code", """concepts = jaxviz.tcav(net, None, ["cat", "automobile", "ship"], ["conv6", "fc1"], images=data, runs=10)
print(concepts.table())
plots.plot_tcav(concepts)"""),
    ("md", """## Bring your own model

Every analysis above takes a `jaxviz.Network`, so it runs on your model as well: `jaxviz.from_linen`
wraps any `flax.linen.Module` unmodified (`from_nnx` an nnx module, `from_function` a plain
`apply(variables, x, layer)`). Its layers are its submodules, named by their paths. Here a small linen CNN,
untrained (random weights), so its units show what random features pick up; `examples/resnet_linen.py`
and `examples/resnet_nnx.py` are larger ones."""),
    ("code", """import flax.linen as nn
import jax


class SmallCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(16, (3, 3), name="conv1")(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(32, (3, 3), name="conv2")(x))
        x = nn.relu(nn.Dense(64, name="features")(x.mean(axis=(1, 2))))
        return nn.Dense(len(class_names), name="logits")(x)


module = SmallCNN()
variables = module.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
mine = jaxviz.from_linen(module, variables, input_shape=(32, 32, 3), class_names=class_names)
print(mine.summary_table())"""),
    ("code", """my_feats = jaxviz.layer_features(mine, data.images, layer=mine.feature_layer)   # "features"
my_study = jaxviz.study_units(my_feats, data.labels, len(class_names), k=10, count=5)
my_units, my_top = list(my_study.units), my_study.top.indices[:, list(my_study.units)]
print(f"{my_study.alive.sum()} of {my_feats.shape[1]} units fire; mean selectivity of the shown units "
      f"{my_study.selectivity.score[my_units].mean():.2f}")
plots.plot_top_k(data.images[my_top], my_units, labels=data.labels[my_top], class_names=class_names,
                title="Top 10 images of five units of an untrained linen CNN")"""),
    ("md", """Everything above, as one HTML page: `jaxviz report --out jaxviz-report` (or
`jaxviz.make_report(out, network=net)`); for your model, `jaxviz report --model my_model.py:build`."""),
]


def build() -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-execute", action="store_true")
    args = parser.parse_args()
    nb = build()
    if not args.no_execute:
        from nbclient import NotebookClient

        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(PATH.parent)}},
                       ).execute()
    PATH.parent.mkdir(exist_ok=True)
    nbformat.write(nb, PATH)
    print(PATH)


if __name__ == "__main__":
    main()
