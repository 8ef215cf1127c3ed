"""Dataset-scale runs: a perturbation method over every image, streamed to a zarr store, resumable, multi-process."""
