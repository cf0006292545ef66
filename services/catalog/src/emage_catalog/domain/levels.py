"""The three QIDO-RS levels and which attributes the catalog keeps, matches and returns at each.

The catalog follows the Study Root information model (PS3.4 §C.6.2): Patient attributes live at the study
level, beside the General Study attributes. An attribute that is neither study- nor series-level is
instance-level and read from the instance's own dataset.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from emage_catalog.domain.dicom import Attribute, resolve_attribute


class QueryLevel(StrEnum):
    """The resource level a QIDO-RS search returns (PS3.18 §10.6.1): one result per entity of the level."""

    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"

    @property
    def depth(self) -> int:
        """0 for the study, 1 for the series and 2 for the instance level (higher levels are shallower)."""
        return _DEPTH[self]


_DEPTH: Final = {QueryLevel.STUDY: 0, QueryLevel.SERIES: 1, QueryLevel.INSTANCE: 2}


def _attributes(*keywords: str) -> tuple[Attribute, ...]:
    return tuple(resolve_attribute(keyword) for keyword in keywords)


def _tags(attributes: tuple[Attribute, ...]) -> frozenset[str]:
    return frozenset(attribute.tag for attribute in attributes)


# Additional Query/Retrieve Attributes (PS3.4 §C.3.4): derived by the catalog from the instances it holds,
# never copied from a dataset, where they would be stale.
MODALITIES_IN_STUDY: Final = resolve_attribute("ModalitiesInStudy")
SOP_CLASSES_IN_STUDY: Final = resolve_attribute("SOPClassesInStudy")
NUMBER_OF_STUDY_RELATED_SERIES: Final = resolve_attribute("NumberOfStudyRelatedSeries")
NUMBER_OF_STUDY_RELATED_INSTANCES: Final = resolve_attribute("NumberOfStudyRelatedInstances")
NUMBER_OF_SERIES_RELATED_INSTANCES: Final = resolve_attribute("NumberOfSeriesRelatedInstances")
INSTANCE_AVAILABILITY: Final = resolve_attribute("InstanceAvailability")
RETRIEVE_URL: Final = resolve_attribute("RetrieveURL")

STUDY_ATTRIBUTES: Final = _attributes(
    # Patient module and Patient Identification (PS3.3 §C.7.1.1), held at the study level (PS3.4 §C.6.2.1).
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "PatientSpeciesDescription",
    "ResponsiblePerson",
    "PatientIdentityRemoved",
    "EthnicGroup",
    "PatientComments",
    # General Study and Patient Study modules (PS3.3 §C.7.2.1, §C.7.2.2).
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyID",
    "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence",
    "StudyDescription",
    "ProcedureCodeSequence",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "AdmittingDiagnosesDescription",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "Occupation",
    "AdditionalPatientHistory",
    # SOP Common (PS3.3 §C.12.1), returned at every level by PS3.18 Tables 10.6.3-3 to -5.
    "TimezoneOffsetFromUTC",
)
STUDY_TAGS: Final = _tags(STUDY_ATTRIBUTES) | _tags(
    (
        MODALITIES_IN_STUDY,
        SOP_CLASSES_IN_STUDY,
        NUMBER_OF_STUDY_RELATED_SERIES,
        NUMBER_OF_STUDY_RELATED_INSTANCES,
    )
)
"""Tags a study document holds: the study-level attributes copied from instances and the derived ones."""

SERIES_ATTRIBUTES: Final = _attributes(
    # General Series, General Equipment and Frame of Reference modules (PS3.3 §C.7.3.1, §C.7.5.1, §C.7.4.1).
    "Modality",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "SeriesDate",
    "SeriesTime",
    "Laterality",
    "BodyPartExamined",
    "ProtocolName",
    "OperatorsName",
    "OperatorIdentificationSequence",
    "PerformingPhysicianName",
    "PatientPosition",
    "PerformedProcedureStepID",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "PerformedProcedureStepDescription",
    "RequestAttributesSequence",
    "Manufacturer",
    "ManufacturerModelName",
    "InstitutionName",
    "InstitutionalDepartmentName",
    "StationName",
    "FrameOfReferenceUID",
    "TimezoneOffsetFromUTC",
)
SERIES_TAGS: Final = _tags(SERIES_ATTRIBUTES) | {NUMBER_OF_SERIES_RELATED_INSTANCES.tag}
"""Tags a series document holds."""


def level_of(tag: str) -> QueryLevel:
    """The level whose document holds ``tag``: study, series, or (anything else) the instance's dataset.

    Timezone Offset From UTC is held at every level; it is reported at the highest.
    """
    if tag in STUDY_TAGS:
        return QueryLevel.STUDY
    if tag in SERIES_TAGS:
        return QueryLevel.SERIES
    return QueryLevel.INSTANCE


# PS3.18 §10.6.3.3, Tables 10.6.3-3 (study), 10.6.3-4 (series) and 10.6.3-5 (instance): the attributes every
# result of the level carries, on top of the matching and ``includefield`` attributes.
DEFAULT_STUDY_RESULT: Final = _attributes(
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "InstanceAvailability",
    "ModalitiesInStudy",
    "ReferringPhysicianName",
    "TimezoneOffsetFromUTC",
    "RetrieveURL",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
DEFAULT_SERIES_RESULT: Final = _attributes(
    "Modality",
    "TimezoneOffsetFromUTC",
    "SeriesDescription",
    "RetrieveURL",
    "SeriesInstanceUID",
    "SeriesNumber",
    "NumberOfSeriesRelatedInstances",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "RequestAttributesSequence",
)
DEFAULT_INSTANCE_RESULT: Final = _attributes(
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceAvailability",
    "TimezoneOffsetFromUTC",
    "RetrieveURL",
    "InstanceNumber",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
)
DEFAULT_RESULT: Final = {
    QueryLevel.STUDY: DEFAULT_STUDY_RESULT,
    QueryLevel.SERIES: DEFAULT_SERIES_RESULT,
    QueryLevel.INSTANCE: DEFAULT_INSTANCE_RESULT,
}
