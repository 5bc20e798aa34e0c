"""calcnode: a DICOM node that finds clusters of microcalcifications in mammograms."""

__version__ = "0.1.0"
