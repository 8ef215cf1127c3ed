"""Analyses of activations and occlusion maps: top-K, unit selectivity, masks, filters, t-SNE, metrics."""
