"""MIMIC-CXR-JPG itself: schemas, CSV tables, the manifest, reports, label policy, the
radiologist-labelled test set, the synthetic demo and the PhysioNet download. Never imports torch."""
