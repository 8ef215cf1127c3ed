"""Engines that evaluate a network on many inputs; the methods are built on them.

    activations  layer_features, activation_maps: the one inference path
    perturb      the perturbation engine: f on (image, mask) pairs made on the device, chunked, sharded
    backprop     the gradient engine: weighted gradient sums over inputs made on the device
    plan         chunk planning from a jaxpr's peak memory
    inputs       checks and fills shared by the engines and the methods

``README.md`` here says which of these are stable for code outside jaxviz.
"""
