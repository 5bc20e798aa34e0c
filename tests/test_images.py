"""images.py: which objects are analysed, pixel normalisation, spacing, orientation."""

import io
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

from node.config import ImagesConfig
from node.errors import NotAnalysableError, UnusableImageError
from node import images
from node.images import (
    PREFERRED_DECODER, decode, decoding_plugin, pixel_spacing_mm, to_mammogram,
)
from node.model import Laterality, Side, View
from node.pixels import display_pixels
from node.testing.dicomfactory import StudyIdentity, make_mammo_dataset
from node.testing.phantom import PhantomSpec, make_phantom
from node.testing.study import phantom_dataset

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
IDENTITY = StudyIdentity(seed=11)


def ramp(rows=128, cols=96):
    return (np.arange(rows * cols).reshape(rows, cols) % 4000 + 50).astype(np.uint16)


def test_monochrome1_is_inverted_once_within_bits_stored():
    stored = ramp()
    m2 = to_mammogram(make_mammo_dataset(stored, identity=IDENTITY, laterality="R", view="CC"))
    m1 = to_mammogram(make_mammo_dataset(4095 - stored, identity=IDENTITY, laterality="R", view="CC", monochrome1=True))
    assert m1.monochrome1 and not m2.monochrome1
    np.testing.assert_array_equal(m1.pixels, m2.pixels)


@pytest.mark.parametrize("ts", [JPEG2000Lossless, JPEGLSLossless, RLELossless])
def test_compressed_inputs_decode_to_the_same_pixels(ts):
    stored = ramp()
    plain = to_mammogram(make_mammo_dataset(stored, identity=IDENTITY, laterality="L", view="MLO"))
    packed = to_mammogram(make_mammo_dataset(stored, identity=IDENTITY, laterality="L", view="MLO", transfer_syntax=ts))
    np.testing.assert_array_equal(plain.pixels, packed.pixels)


def test_for_processing_is_log_transformed_with_attenuation_bright():
    exposure = np.full((128, 96), 8000, np.uint16)
    exposure[40:60, 30:50] = 2000  # less X-ray through a denser region
    m = to_mammogram(make_mammo_dataset(exposure, identity=IDENTITY, laterality="L", view="CC",
                                        for_processing=True, bits_stored=14))
    assert m.for_processing
    dense, background = float(m.pixels[50, 40]), float(m.pixels[10, 10])
    assert dense > background
    assert dense - background == pytest.approx(1000 * np.log(4.0), rel=1e-3)


@pytest.mark.parametrize("attrs, expected, source", [
    ("both", 0.07, "PixelSpacing"),
    ("ihe", 0.07, "ImagerPixelSpacing / ERMF"),
    ("imager", 0.0756, "ImagerPixelSpacing"),
    ("none", 0.1, "default"),
])
def test_spacing_follows_the_spec_rule(attrs, expected, source):
    ds = make_mammo_dataset(ramp(), identity=IDENTITY, laterality="R", view="CC", spacing_mm=0.07,
                            magnification=1.08, spacing_attrs=attrs)
    warnings = []
    spacing, used = pixel_spacing_mm(ds, ImagesConfig(), warnings)
    assert used == source
    assert spacing[0] == pytest.approx(expected, rel=2e-3)
    assert bool(warnings) == (source in ("ImagerPixelSpacing", "default"))


def test_laterality_view_and_chest_wall_come_from_the_header():
    for lat, view, chest in (("R", "CC", Side.RIGHT), ("L", "MLO", Side.LEFT), ("R", "XCCL", Side.RIGHT)):
        m = to_mammogram(make_mammo_dataset(ramp(), identity=IDENTITY, laterality=lat, view=view))
        assert m.laterality == Laterality(lat)
        assert m.view == View(view)
        assert m.chest_wall == chest


def test_padding_is_masked():
    stored = ramp()
    stored[:, :20] = 0
    ds = make_mammo_dataset(stored, identity=IDENTITY, laterality="R", view="CC")
    ds.PixelPaddingValue = 0
    m = to_mammogram(ds)
    assert m.valid is not None and not m.valid[:, :20].any() and m.valid[:, 20:].all()


def test_unusable_objects_say_why():
    ds = make_mammo_dataset(ramp(), identity=IDENTITY, laterality="R", view="CC")
    ct = pydicom.Dataset()
    ct.update(ds)
    ct.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    with pytest.raises(NotAnalysableError, match="CT Image Storage is not a mammography image"):
        to_mammogram(ct)
    no_pixels = make_mammo_dataset(ramp(), identity=IDENTITY, laterality="R", view="CC")
    del no_pixels.PixelData
    with pytest.raises(UnusableImageError, match="no pixel data"):
        to_mammogram(no_pixels)
    tiny = make_mammo_dataset(np.zeros((2, 1), np.uint16), identity=IDENTITY, laterality="R", view="CC")
    with pytest.raises(UnusableImageError, match="2 x 1 pixels is too small"):
        to_mammogram(tiny)
    short = make_mammo_dataset(ramp(), identity=IDENTITY, laterality="R", view="CC")
    short.PixelData = short.PixelData[:1000]
    with pytest.raises(UnusableImageError, match="pixel data holds 1000 bytes, but 128 x 96 pixels of 16 bits need 24576"):
        to_mammogram(short)


def test_display_pixels_use_the_window_and_polarity():
    stored = ramp()
    ds2 = make_mammo_dataset(stored, identity=IDENTITY, laterality="R", view="CC", window=(2000, 4000))
    ds1 = make_mammo_dataset(4095 - stored, identity=IDENTITY, laterality="R", view="CC", monochrome1=True,
                             window=(2095, 4000))
    d2, d1 = display_pixels(ds2, decode(ds2)), display_pixels(ds1, decode(ds1))
    assert d2.dtype == np.uint8
    assert np.abs(d2.astype(int) - d1.astype(int)).max() <= 1
    assert d2[0, 0] < 20 and d2.max() > 240


@pytest.mark.parametrize("encoding", ["negative slope", "intercept alone", "modality LUT"])
def test_the_display_depends_only_on_the_modality_lut_output(encoding):
    """Another encoding of the same Modality LUT output, under the same window, displays alike.
    pydicom takes the window's output range from the Modality LUT, so for a negative Rescale
    Slope its output falls as values rise; it ignores an intercept without a slope; and after a
    Modality LUT Sequence its output spans the LUT's bits, not BitsStored."""
    stored, window = ramp(), (2000, 4000)
    plain = make_mammo_dataset(stored, identity=IDENTITY, laterality="R", view="CC", window=window)
    if encoding == "negative slope":
        ds = make_mammo_dataset(4095 - stored, identity=IDENTITY, laterality="R", view="CC", window=window)
        ds.RescaleSlope, ds.RescaleIntercept = -1, 4095
    elif encoding == "intercept alone":
        ds = make_mammo_dataset(stored, identity=IDENTITY, laterality="R", view="CC", window=window)
        del ds.RescaleSlope
        ds.RescaleIntercept = -1000
    else:
        plain = make_mammo_dataset(16 * stored, identity=IDENTITY, laterality="R", view="CC", bits_stored=16,
                                   window=(32000, 64000))
        ds = make_mammo_dataset(stored, identity=IDENTITY, laterality="R", view="CC", window=(32000, 64000))
        del ds.RescaleSlope, ds.RescaleIntercept
        lut = pydicom.Dataset()
        lut.LUTDescriptor, lut.LUTData, lut.ModalityLUTType = [4096, 0, 16], list(range(0, 65536, 16)), "US"
        ds.ModalityLUTSequence = [lut]
    np.testing.assert_array_equal(apply_modality_lut(ds.pixel_array, ds), apply_modality_lut(plain.pixel_array, plain))
    expected = display_pixels(plain, decode(plain))
    assert expected.min() < 20 and expected.max() > 240
    assert np.abs(display_pixels(ds, decode(ds)).astype(int) - expected).max() <= 1


@pytest.mark.parametrize("defect", ["empty VOI LUT Sequence", "VOI LUT without data", "centre without width",
                                    "empty window", "width 0"])
def test_an_unusable_voi_is_displayed_as_if_absent(defect):
    """pydicom applies no VOI for the first four (and refuses a width of 0): the image is
    stretched over its own values, as without any VOI attribute, instead of failing."""
    stored = ramp()
    ds = make_mammo_dataset(stored, identity=IDENTITY, laterality="R", view="CC")
    for keyword in ("WindowCenter", "WindowWidth", "VOILUTSequence"):
        ds.pop(keyword, None)
    expected = display_pixels(ds, decode(ds))  # no VOI attribute at all
    if defect == "empty VOI LUT Sequence":
        ds.VOILUTSequence = []
    elif defect == "VOI LUT without data":
        item = pydicom.Dataset()
        item.LUTDescriptor = [4096, 0, 12]
        ds.VOILUTSequence = [item]
    elif defect == "centre without width":
        ds.WindowCenter = 2000
    elif defect == "empty window":
        ds.WindowCenter, ds.WindowWidth = None, None
    else:
        ds.WindowCenter, ds.WindowWidth = 2000, 0
    np.testing.assert_array_equal(display_pixels(ds, decode(ds)), expected)


def test_an_empty_voi_lut_sequence_leaves_the_window_in_force():
    stored = ramp()
    windowed = make_mammo_dataset(stored, identity=IDENTITY, laterality="R", view="CC", window=(1000, 800))
    expected = display_pixels(windowed, decode(windowed))
    windowed.VOILUTSequence = []
    np.testing.assert_array_equal(display_pixels(windowed, decode(windowed)), expected)


@pytest.mark.parametrize("empty", ["RescaleSlope", "RescaleIntercept"])
def test_an_empty_rescale_value_counts_as_identity_with_a_warning(empty):
    stored = ramp()
    plain = make_mammo_dataset(stored, identity=IDENTITY, laterality="R", view="CC", window=(2000, 4000))
    ds = make_mammo_dataset(stored, identity=IDENTITY, laterality="R", view="CC", window=(2000, 4000))
    ds.RescaleSlope, ds.RescaleIntercept = 2, 100
    setattr(ds, empty, None)
    mammogram = to_mammogram(ds)
    np.testing.assert_array_equal(mammogram.pixels, to_mammogram(plain).pixels)
    assert any("Rescale Slope or Intercept present but empty" in w for w in mammogram.warnings)
    assert not any("Rescale" in w for w in to_mammogram(plain).warnings)
    np.testing.assert_array_equal(display_pixels(ds, decode(ds)), display_pixels(plain, decode(plain)))


REAL_FILES = sorted(REAL.glob("*/*.dcm")) if REAL.is_dir() else []


@pytest.mark.skipif(not REAL_FILES, reason=f"real mammography files not present at {REAL}")
@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_real_file_is_analysed_or_refused_with_a_reason(path):
    ds = pydicom.dcmread(path)
    try:
        m = to_mammogram(ds)
    except UnusableImageError as exc:
        assert len(str(exc)) > 10
        assert path.parent.name != "mg" or "rsna" not in path.name and "senoess" not in path.name
        return
    assert path.parent.name == "mg"
    assert m.pixels.dtype == np.float32 and m.pixels.shape == (ds.Rows, ds.Columns)
    assert m.laterality is not None
    assert 0.05 <= m.spacing_mm[0] <= 0.2


# --- pixel polarity and the For Processing log transform (issue 3) -------------------------

@pytest.fixture(scope="module")
def small_phantom():
    return make_phantom(PhantomSpec(rows=384, cols=320, spacing_mm=0.1, view="MLO", n_clusters=1, seed=31))


def phantom_variant(phantom, *, for_processing: bool, monochrome1: bool):
    """The phantom as a modality would send it. For Presentation MONOCHROME1 stores the inverted
    log image (the display polarity is part of those values). For Processing stores the linear
    exposure whatever the polarity: PixelIntensityRelationshipSign +1 says how stored values
    relate to the X-rays, and MONOCHROME1 only asks a viewer to show high values dark
    (PS3.3 C.8.11.3.1.2)."""
    return phantom_dataset(phantom, IDENTITY, 1, monochrome1=monochrome1, for_processing=for_processing)


def test_for_processing_monochrome1_and_monochrome2_give_the_same_image(small_phantom):
    m2 = to_mammogram(phantom_variant(small_phantom, for_processing=True, monochrome1=False))
    m1 = to_mammogram(phantom_variant(small_phantom, for_processing=True, monochrome1=True))
    assert m1.monochrome1 and m1.for_processing
    assert np.corrcoef(m1.pixels.ravel(), m2.pixels.ravel())[0, 1] > 0.999
    np.testing.assert_array_equal(m1.pixels, m2.pixels)  # the polarity only says how to show them


@pytest.mark.parametrize("for_processing", [False, True], ids=["presentation", "processing"])
@pytest.mark.parametrize("monochrome1", [False, True], ids=["MONOCHROME2", "MONOCHROME1"])
def test_dense_is_bright_whatever_the_intent_and_polarity(small_phantom, for_processing, monochrome1):
    m = to_mammogram(phantom_variant(small_phantom, for_processing=for_processing, monochrome1=monochrome1))
    breast = small_phantom.breast_mask
    # The For Presentation MONOCHROME2 image is bright = dense by construction.
    reference = small_phantom.presentation[breast].astype(float)
    assert np.corrcoef(m.pixels[breast], reference)[0, 1] > 0.99
    assert m.pixels[breast].mean() > m.pixels[~breast].mean()  # air is the least dense
    cluster = small_phantom.clusters[0]
    speck_values = [m.pixels[round(r), round(c)] for r, c, _ in cluster.specks]
    assert np.median(speck_values) > np.median(m.pixels[breast])


def test_for_processing_log_data_follow_the_sign():
    """LOG data with sign -1 (higher values = fewer X-rays) are already attenuation-bright."""
    exposure = np.full((128, 96), 3000, np.uint16)
    exposure[40:60, 30:50] = 3500
    ds = make_mammo_dataset(exposure, identity=IDENTITY, laterality="L", view="CC", for_processing=True,
                            bits_stored=12)
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = -1
    m = to_mammogram(ds)
    assert m.pixels[50, 40] - m.pixels[10, 10] == pytest.approx(500)
    ds.PixelIntensityRelationshipSign = 1
    m = to_mammogram(ds)
    assert m.pixels[50, 40] - m.pixels[10, 10] == pytest.approx(-500)


@pytest.mark.parametrize("slope, intercept", [(0.5, 10), (-0.5, 2100)])
def test_monochrome1_is_inverted_after_the_modality_lut(slope, intercept):
    stored = ramp()
    m2_ds = make_mammo_dataset(stored, identity=IDENTITY, laterality="R", view="CC")
    m1_ds = make_mammo_dataset(4095 - stored, identity=IDENTITY, laterality="R", view="CC", monochrome1=True)
    for ds in (m1_ds, m2_ds):
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    np.testing.assert_allclose(to_mammogram(m1_ds).pixels, to_mammogram(m2_ds).pixels)
    np.testing.assert_allclose(to_mammogram(m2_ds).pixels, slope * stored + intercept)


# --- decoders ------------------------------------------------------------------------------

@pytest.mark.parametrize("ts", [JPEG2000Lossless, JPEGLSLossless, RLELossless])
def test_one_decoder_per_syntax_the_preferred_one_when_installed(ts):
    available = get_decoder(ts).available_plugins
    plugin = decoding_plugin(ts)
    assert plugin in available
    assert plugin == PREFERRED_DECODER[ts] or PREFERRED_DECODER[ts] not in available
    assert decoding_plugin(ExplicitVRLittleEndian) == "" and decoding_plugin(None) == ""


def test_decoding_twice_reuses_the_decoded_array():
    ds = make_mammo_dataset(ramp(), identity=IDENTITY, laterality="R", view="CC", transfer_syntax=JPEGLSLossless)
    first = decode(ds)
    assert decode(ds) is first
    np.testing.assert_array_equal(to_mammogram(ds).pixels, ramp())


def test_a_corrupt_stream_is_not_handed_to_another_decoder():
    ds = make_mammo_dataset(ramp(), identity=IDENTITY, laterality="R", view="CC", transfer_syntax=JPEGLSLossless)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    raw = bytearray(buffer.getvalue())
    raw[-2000:-1800] = bytes(200)  # inside the JPEG-LS scan
    damaged = pydicom.dcmread(io.BytesIO(bytes(raw)))
    with pytest.raises(UnusableImageError, match="cannot be decoded") as caught:
        decode(damaged)
    others = set(get_decoder(JPEGLSLossless).available_plugins) - {decoding_plugin(JPEGLSLossless)}
    assert not any(f"{name}:" in str(caught.value) for name in others)


def test_a_bounded_file_reads_nothing_past_its_limit(tmp_path):
    data = bytes(range(256)) * 64
    path = tmp_path / "f"
    path.write_bytes(data)
    with images.open_bounded(path, 1000) as fp:
        assert fp.read(10) == data[:10] and fp.tell() == 10
        fp.seek(990)
        assert fp.read(100) == data[990:1000] and fp.tell() == 1000
        assert fp.read(5) == b""
        fp.seek(500)
        assert fp.read() == data[500:1000]
        fp.seek(0)
        assert fp.read(1 << 40) == data[:1000]  # a damaged length: never allocated
    with images.open_bounded(path) as fp:
        fp.seek(-6, os.SEEK_END)
        assert fp.read(100) == data[-6:] and fp.tell() == len(data)
