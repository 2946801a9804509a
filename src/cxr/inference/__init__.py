"""Inference from a checkpoint alone: preprocessing, batched prediction, files, Grad-CAM."""
