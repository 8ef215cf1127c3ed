"""Attribution methods: one module each, one ``Method`` record each, listed in ``registry``.

    occlusion   occlusion sensitivity (sliding windows) on the perturbation engine
    rise        RISE saliency (random upsampled binary grids)
    ablation    feature ablation over segments (grid, SLIC or any label map)
    gradients   saliency, input x gradient, integrated gradients, SmoothGrad on the gradient engine
    gradcam     Grad-CAM at a layer with spatial maps
    base        what a method is: ``Method``, its options, ``Attribution``, ``Explained``
    registry    every method by name: what the command line, comparison, sanity check,
                dataset runs and report read
"""
