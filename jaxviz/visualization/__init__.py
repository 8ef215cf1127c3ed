"""Feature visualization: what each unit of a layer looks for, all units in one compiled program.

    visualize          ``visualize(network, layer, units, ...) -> Visualization``: the optimization
    parameterizations  pixel and Fourier images, colour decorrelation from a dataset's RGB covariance
    transforms         the random jitter, scale and rotation applied at every step
    objectives         channel, neuron, direction or any callable; penalties; the diversity term
"""
