"""Every coded concept the reports use, taken from pydicom's code dictionary.

No other module spells a code value. The CID-scoped accessors (``codes.CID6014``...) are used where
the spec names a context group, so a retired or out-of-group code cannot slip in: in particular
``codes.DCM.CalcificationCluster`` (111105) is retired and must never be emitted.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from node.model import Distribution, Morphology

ZERO_WIDTH_SPACE = "\u200b"

# Document structure (TID 4000 / 4001 / 4003)
MAMMOGRAPHY_CAD_REPORT = codes.DCM.MammographyCADReport
LANGUAGE_OF_CONTENT = codes.DCM.LanguageOfContentItemAndDescendants
# RFC 5646 tags are not in pydicom's dictionary; this is the form highdicom uses.
ENGLISH_US = Code("en-US", "RFC5646", "English (United States)")
IMAGE_LIBRARY = codes.DCM.ImageLibrary
FINDINGS_SUMMARY = codes.DCM.CADProcessingAndFindingsSummary
INDIVIDUAL_IMPRESSION = codes.DCM.IndividualImpressionRecommendation
RENDERING_INTENT = codes.DCM.RenderingIntent
PRESENTATION_REQUIRED = codes.CID6034.PresentationRequiredRenderingDeviceIsExpectedToPresent

# Findings (TID 4004 / 4005 / 4006 / 4021)
COMPOSITE_FEATURE = codes.DCM.CompositeFeature
SINGLE_IMAGE_FINDING = codes.DCM.SingleImageFinding
CALCIFICATION_CLUSTER = codes.CID6014.CalcificationCluster
COMPOSITE_TYPE = codes.DCM.CompositeType
RELATED_SPATIALLY = codes.CID6035.TargetContentItemsAreRelatedSpatially
SCOPE_OF_FEATURE = codes.DCM.ScopeOfFeature
ON_MULTIPLE_IMAGES = codes.CID6036.FeatureDetectedOnMultipleImages
ON_ONE_OF_THE_IMAGES = codes.CID6036.FeatureDetectedOnOnlyOneOfTheImages
CERTAINTY_OF_FEATURE = codes.DCM.CertaintyOfFeature
CERTAINTY_OF_FINDING = codes.DCM.CertaintyOfFinding
NUMBER_OF_CALCIFICATIONS = codes.DCM.NumberOfCalcifications
CALCIFICATION_TYPE = codes.DCM.CalcificationType
CALCIFICATION_DISTRIBUTION = codes.DCM.CalcificationDistribution
CENTER = codes.DCM.Center
OUTLINE = codes.DCM.Outline

# Algorithm identification (TID 4019)
ALGORITHM_NAME = codes.DCM.AlgorithmName
ALGORITHM_VERSION = codes.DCM.AlgorithmVersion
ALGORITHM_PARAMETERS = codes.DCM.AlgorithmParameters

# Summaries (TID 4015-4018)
SUMMARY_OF_DETECTIONS = codes.DCM.SummaryOfDetections
SUMMARY_OF_ANALYSES = codes.DCM.SummaryOfAnalyses
SUCCESSFUL_DETECTIONS = codes.DCM.SuccessfulDetections
FAILED_DETECTIONS = codes.DCM.FailedDetections
SUCCESSFUL_ANALYSES = codes.DCM.SuccessfulAnalyses
FAILED_ANALYSES = codes.DCM.FailedAnalyses
DETECTION_PERFORMED = codes.DCM.DetectionPerformed
ANALYSIS_PERFORMED = codes.DCM.AnalysisPerformed
SPATIAL_COLLOCATION = codes.CID6043.SpatialCollocationAnalysis
SUCCEEDED = codes.CID6042.Succeeded
PARTIALLY_SUCCEEDED = codes.CID6042.PartiallySucceeded
FAILED = codes.CID6042.Failed
NOT_ATTEMPTED = codes.CID6042.NotAttempted

# CID 6047, keyed by (all succeeded?, any succeeded?, findings?)
WITH_FINDINGS = codes.CID6047.AllAlgorithmsSucceededWithFindings
WITHOUT_FINDINGS = codes.CID6047.AllAlgorithmsSucceededWithoutFindings
PARTIAL_WITH_FINDINGS = codes.CID6047.NotAllAlgorithmsSucceededWithFindings
PARTIAL_WITHOUT_FINDINGS = codes.CID6047.NotAllAlgorithmsSucceededWithoutFindings
NONE_SUCCEEDED = codes.CID6047.NoAlgorithmsSucceededWithoutFindings

# Image library (TID 4020)
IMAGE_LATERALITY = codes.DCM.ImageLaterality
IMAGE_VIEW = codes.DCM.ImageView
IMAGE_VIEW_MODIFIER = codes.DCM.ImageViewModifier
PATIENT_ORIENTATION_ROW = codes.DCM.PatientOrientationRow
PATIENT_ORIENTATION_COLUMN = codes.DCM.PatientOrientationColumn
STUDY_DATE = codes.DCM.StudyDate
STUDY_TIME = codes.DCM.StudyTime
CONTENT_DATE = codes.DCM.ContentDate
CONTENT_TIME = codes.DCM.ContentTime
HORIZONTAL_PIXEL_SPACING = codes.DCM.HorizontalPixelSpacing
VERTICAL_PIXEL_SPACING = codes.DCM.VerticalPixelSpacing
POSITIONER_PRIMARY_ANGLE = codes.DCM.PositionerPrimaryAngle
LATERALITY = {
    "R": codes.CID6022.RightBreast,
    "L": codes.CID6022.LeftBreast,
    "B": codes.CID6022.BothBreasts,
}

# Units (UCUM)
MILLIMETRE = codes.UCUM.Millimeter
PERCENT = codes.UCUM.Percent
NO_UNITS = codes.UCUM.NoUnits
DEGREE = codes.UCUM.Degree

# SC derivation (CID 7202)
SOURCE_IMAGE_FOR_PROCESSING = codes.CID7202.SourceImageForImageProcessingOperation

# CID 6010 / 6012. BI-RADS "coarse heterogeneous" maps to Heterogeneous calcification (129763007).
MORPHOLOGY = {
    Morphology.PUNCTATE: codes.CID6010.PunctateCalcification,
    Morphology.AMORPHOUS: codes.CID6010.AmorphousCalcification,
    Morphology.COARSE_HETEROGENEOUS: codes.CID6010.HeterogeneousCalcification,
    Morphology.FINE_PLEOMORPHIC: codes.CID6010.FinePleomorphicCalcification,
    Morphology.FINE_LINEAR_BRANCHING: codes.CID6010.FineLinearBranchingCastingCalcification,
}
DISTRIBUTION = {
    Distribution.GROUPED: codes.CID6012.GroupedCalcificationDistribution,
    Distribution.LINEAR: codes.CID6012.LinearCalcificationDistribution,
    Distribution.SEGMENTAL: codes.CID6012.SegmentalCalcificationDistribution,
    Distribution.REGIONAL: codes.CID6012.RegionalCalcificationDistribution,
}

# For conformance checks: (value, scheme) pairs that must never appear.
RETIRED = {
    (codes.DCM.CalcificationCluster.value, "DCM"),
    (codes.DCM.IndividualCalcification.value, "DCM"),
}
FINDING_CODES = {(c.value, c.scheme_designator) for c in (getattr(codes.CID6014, k)
                                                          for k in codes.CID6014.dir())}
RENDERING_INTENTS = {(c.value, c.scheme_designator) for c in (getattr(codes.CID6034, k)
                                                              for k in codes.CID6034.dir())}


def meaning(code: Code) -> str:
    """The code meaning without the zero-width spaces pydicom's dictionary carries (111034...)."""
    return code.meaning.replace(ZERO_WIDTH_SPACE, "")


def code_item(code: Code) -> Dataset:
    """A basic code sequence item (value, scheme, meaning)."""
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = meaning(code)
    return item
