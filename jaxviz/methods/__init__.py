"""Attribution methods and their evaluation, built on the perturbation engine (``jaxviz.engine.perturb``).

Each method is a family of masks generated on the device and one of the
engine's reductions:

    rise          RISE saliency (random upsampled binary grids), ``mask_weighted_sum``
    ablation      feature ablation over segments (grid, SLIC or any label map), ``perturbed_outputs``
    faithfulness  deletion / insertion curves and MuFidelity of any attribution map
"""
