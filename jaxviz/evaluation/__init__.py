"""Evaluating attribution methods: is a map faithful, does it depend on the model, which method to trust?

    faithfulness  deletion / insertion curves and MuFidelity of any attribution map
    sanity        the model-randomization sanity check (Adebayo et al. 2018)
    comparison    every registered method's maps of the same images, scored by faithfulness
"""
