"""Engines that evaluate a network on many inputs: layer activations and the fused occlusion engine."""
