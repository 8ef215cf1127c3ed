"""A tiny nnx classifier holding the standard ``nnx.Dropout(rate, rngs=rngs)``, whose state has a typed PRNG
key and a counter (an ``RngKey`` and an ``RngCount``); also a ``--model`` file (``build``)."""

from flax import nnx

INPUT_SHAPE = (32, 32, 3)
CLASS_NAMES = ("cat", "dog", "bird")


class DropoutNet(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.fc = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        return self.fc(self.drop(nnx.relu(self.conv(x))).mean((1, 2)))


def build():
    return DropoutNet(nnx.Rngs(0))
