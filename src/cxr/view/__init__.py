"""`cxr view`: a local, private web browser over the manifest and evaluation directories."""
