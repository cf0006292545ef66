"""QIDO-RS result datasets (PS3.18 §10.6.3.3) and BulkDataURI resolution (PS3.18 §F.2.6)."""

from __future__ import annotations

from emage_catalog.domain.levels import QueryLevel
from emage_catalog.domain.query import parse_search
from emage_catalog.domain.results import Hit, resolve_bulk_data, result_dataset, result_shape

BASE = "https://emage.example.fr/dicomweb/"
STUDY = {
    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]},
    "00201208": {"vr": "IS", "Value": [3]},
    "00081030": {"vr": "LO", "Value": ["Thorax"]},
    "00080201": {"vr": "SH", "Value": ["+0100"]},
}
SERIES = {"00080060": {"vr": "CS", "Value": ["CT"]}, "00201209": {"vr": "IS", "Value": [3]}}
INSTANCE = {
    "00080018": {"vr": "UI", "Value": ["1.2.3.1.1"]},
    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Stale^Name"}]},
    "00280010": {"vr": "US", "Value": [512]},
    "7FE00010": {"vr": "OW", "BulkDataURI": "studies/1.2.3/series/1.2.3.1/instances/1.2.3.1.1/bulk/7FE00010"},
}
HIT = Hit(
    "1.2.3",
    "1.2.3.1",
    "1.2.3.1.1",
    {QueryLevel.STUDY: STUDY, QueryLevel.SERIES: SERIES, QueryLevel.INSTANCE: INSTANCE},
)


def test_study_results_read_study_documents_only() -> None:
    query = parse_search([], level=QueryLevel.STUDY, max_limit=10)
    shape = result_shape(query)
    assert shape.levels == (QueryLevel.STUDY,)
    assert shape.tags is not None
    assert "00201208" in shape.tags
    assert "00081030" not in shape.tags


def test_hierarchical_series_results_need_the_study_only_for_the_time_zone() -> None:
    scoped = result_shape(parse_search([], level=QueryLevel.SERIES, study_instance_uid="1.2.3", max_limit=10))
    relational = result_shape(parse_search([], level=QueryLevel.SERIES, max_limit=10))
    assert scoped.tags is not None
    assert relational.tags is not None
    assert "00100010" not in scoped.tags
    assert "00100010" in relational.tags
    assert relational.levels == (QueryLevel.STUDY, QueryLevel.SERIES)


def test_an_attribute_is_read_from_the_level_that_owns_it() -> None:
    query = parse_search([("includefield", "PatientName,Modality")], level=QueryLevel.INSTANCE, max_limit=10)
    result = result_dataset(result_shape(query), HIT, BASE)
    # The study's current name, not the one this instance was stored with.
    assert result["00100010"] == STUDY["00100010"]
    assert result["00080060"] == SERIES["00080060"]
    assert result["00280010"] == INSTANCE["00280010"]
    assert result["00080056"] == {"vr": "CS", "Value": ["ONLINE"]}
    assert result["00081190"] == {
        "vr": "UR",
        "Value": [BASE + "studies/1.2.3/series/1.2.3.1/instances/1.2.3.1.1"],
    }
    assert result["00080201"] == STUDY["00080201"]
    assert "00081030" not in result
    assert "7FE00010" not in result
    assert list(result) == sorted(result)


def test_includefield_all_merges_the_lineage_and_resolves_bulk_data() -> None:
    query = parse_search([("includefield", "all")], level=QueryLevel.INSTANCE, max_limit=10)
    result = result_dataset(result_shape(query), HIT, BASE)
    assert result["00100010"] == STUDY["00100010"]
    assert result["00201209"] == SERIES["00201209"]
    assert (
        result["7FE00010"]["BulkDataURI"]
        == BASE + "studies/1.2.3/series/1.2.3.1/instances/1.2.3.1.1/bulk/7FE00010"
    )


def test_bulk_data_uris_in_sequences_are_resolved_and_absolute_ones_kept() -> None:
    dataset = {
        "00282000": {"vr": "OB", "BulkDataURI": "https://elsewhere.example/icc"},
        "52009230": {
            "vr": "SQ",
            "Value": [{"00282000": {"vr": "OB", "BulkDataURI": "studies/1/bulk/00282000"}}, {}],
        },
    }
    resolved = resolve_bulk_data(dataset, BASE)
    assert resolved["00282000"]["BulkDataURI"] == "https://elsewhere.example/icc"
    assert resolved["52009230"]["Value"][0]["00282000"]["BulkDataURI"] == BASE + "studies/1/bulk/00282000"
    assert dataset["52009230"]["Value"][0]["00282000"]["BulkDataURI"] == "studies/1/bulk/00282000"
