"""Reporting: datasets in, datasets out (Mammography CAD SR, overlay SC, GSPS).

``sr.build_cad_sr``, ``overlay.build_overlay_sc`` and ``gsps.build_gsps`` turn findings and the
source image headers into new DICOM datasets. Nothing here opens sockets or files; codes live in
``codes`` and UIDs are derived deterministically in ``uids``.
"""
