"""Every output kind through dciodvfy / dsrdump, and the GSPS pipeline through dcmp2pgm."""

from __future__ import annotations


import numpy as np
import pytest

from conformance import (
    DCIODVFY, DCMP2PGM, DSRDUMP, render_gsps, run_dciodvfy, run_dsrdump,
)
from node.reporting.gsps import build_gsps
from node.reporting.overlay import build_overlay_sc
from node.reporting.sr import build_cad_sr
from peers import require
from test_reporting import (
    CENTRES, EQUIPMENT, NOW, SPECKS, display_of, make_study, sources_of,
)

pytestmark = pytest.mark.slow


def _write(ds, tmp_path, name):
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("kind", ["findings", "no_findings", "partial_failure"])
def test_sr_validates(tmp_path, kind):
    require(DCIODVFY)
    require(DSRDUMP)
    images, study = make_study(findings=kind != "no_findings",
                               failed=("LMLO",) if kind == "partial_failure" else ())
    path = _write(build_cad_sr(sources_of(images), study, EQUIPMENT, NOW), tmp_path, "sr.dcm")
    assert run_dciodvfy(path) == []
    assert run_dsrdump(path) == (0, [])


def test_sc_validates(tmp_path):
    require(DCIODVFY)
    images, study = make_study()
    sc = build_overlay_sc(images[1], display_of(images[1]), study.images[1], EQUIPMENT, NOW)
    assert run_dciodvfy(_write(sc, tmp_path, "sc.dcm")) == []


@pytest.mark.parametrize("monochrome1", [False, True], ids=["MONOCHROME2", "MONOCHROME1"])
def test_gsps_validates_and_renders_marks_on_calcium(tmp_path, monochrome1):
    require(DCIODVFY)
    require(DCMP2PGM)
    images, study = make_study(seed=5, monochrome1=monochrome1)
    pr = build_gsps(images, study.images, EQUIPMENT, NOW)[0]
    gsps_path = _write(pr, tmp_path, "gsps.dcm")
    assert run_dciodvfy(gsps_path) == []
    for annotation in pr.GraphicAnnotationSequence:
        uid = annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID
        source = sources_of(images)[uid]
        image_path = _write(source, tmp_path, f"{uid}.dcm")
        rendered = render_gsps(gsps_path, image_path, tmp_path / f"{uid}.pgm")
        assert rendered.shape == (source.Rows, source.Columns)
        centre_rc = CENTRES[(source.ImageLaterality, source.ViewPosition)]
        _assert_circle_surrounds_bright_specks(rendered, annotation, centre_rc)


def _speck_mask(rendered: np.ndarray) -> np.ndarray:
    """Saturated pixels whose whole 3x3 neighbourhood is saturated: the specks, not the noise."""
    bright = (rendered >= 250).astype(np.int32)
    padded = np.pad(bright, 1)
    rows, cols = bright.shape
    count = sum(padded[1 + dr:1 + dr + rows, 1 + dc:1 + dc + cols]
                for dr in (-1, 0, 1) for dc in (-1, 0, 1))
    return count == 9


def _assert_circle_surrounds_bright_specks(rendered, annotation, centre_rc):
    """The calcium renders bright (not inverted) and the GSPS circle encloses those pixels."""
    specks = np.array([rendered[centre_rc[0] + dr, centre_rc[1] + dc] for dr, dc in SPECKS])
    assert specks.min() >= 250 and rendered.mean() < 200, "calcium is not bright under the GSPS"
    cx, cy, px, py = [float(v) for v in annotation.GraphicObjectSequence[0].GraphicData]
    radius = np.hypot(px - cx, py - cy)
    rows, cols = np.nonzero(_speck_mask(rendered))
    assert rows.size >= len(SPECKS)
    distance = np.hypot(cols + 0.5 - cx, rows + 0.5 - cy)
    assert np.all(distance < radius), "a bright speck lies outside the drawn circle"


def test_gsps_with_voi_lut_sequence_validates(tmp_path):
    require(DCIODVFY)
    import pydicom

    images, study = make_study()
    lut = pydicom.Dataset()
    lut.LUTDescriptor = [4096, 0, 12]
    lut.LUTData = [min(4095, v * 2) for v in range(4096)]
    for ds in images[:2]:
        ds.VOILUTSequence = [lut]
        del ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction
    pr = build_gsps(images, study.images, EQUIPMENT, NOW)[0]
    assert run_dciodvfy(_write(pr, tmp_path, "gsps_lut.dcm")) == []


@pytest.mark.parametrize("defect", ["width 0", "centre without width"])
def test_gsps_over_an_unusable_window_shows_the_whole_range_and_validates(tmp_path, defect):
    """highdicom refuses to copy such a window; the GSPS then carries a window over each image's
    whole Modality LUT output (the picture an identity VOI gives) instead of not being made."""
    require(DCIODVFY)
    images, study = make_study()
    for ds in images[:2]:
        if defect == "width 0":
            ds.WindowCenter, ds.WindowWidth = 2048, 0
        else:
            del ds.WindowWidth
    pr = build_gsps(images, study.images, EQUIPMENT, NOW)[0]
    windows = [item for item in pr.SoftcopyVOILUTSequence if "WindowWidth" in item]
    assert windows and all(float(item.WindowWidth) >= 1 for item in windows)
    assert run_dciodvfy(_write(pr, tmp_path, "gsps_defect.dcm")) == []
