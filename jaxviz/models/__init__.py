"""Models: the ``Network`` interface every analysis takes, its adapters, and the built-in CNN.

``network`` defines ``Network`` and ``InputSpec``; ``adapters`` makes one from
the built-in CNN, a linen or nnx module, or a plain function; ``cnn``,
``weights`` and ``train`` are the built-in CIFAR-10 CNN, its weights files and
its training; ``loading`` resolves ``--model FILE_OR_MODULE:ATTR``.
"""
