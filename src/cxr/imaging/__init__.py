"""Decoding X-ray files and the image cache built from the manifest."""
