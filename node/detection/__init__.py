"""Microcalcification cluster detection: pure numpy / scipy / scikit-image.

The entry point is ``node.detection.detector.detect``. This package never imports pydicom and
never touches files; importing it starts nothing heavy.
"""
