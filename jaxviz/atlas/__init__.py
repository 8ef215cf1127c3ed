"""The atlas: a static site of every unit of chosen layers, built from a whole dataset in recorded stages."""
