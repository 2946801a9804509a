"""cxr: from PhysioNet credentials to an evaluated, explainable chest X-ray classifier on MIMIC-CXR-JPG."""

__version__ = "0.1.0"
