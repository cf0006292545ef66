"""Search scopes into MongoDB filters: a ``$or`` of clauses, within the QIDO filter, at every level."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from emage_catalog.adapters.mongo import compile_filter, compile_scope
from emage_catalog.domain.levels import QueryLevel
from emage_catalog.domain.query import SearchQuery, parse_search
from emage_common.access_contract import WireScopeClause, WireSearchScope

F = "750000001"
P1, P2, P3 = "pid:750000001:IPP-1", "pid:750000001:IPP-2", "ins:1.2.250.1.213.1.4.10:285047505612322"
S1, S2, S3 = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2", "1.2.826.0.1.3680043.8.498.3"
RPPS = "10100000024"


def scope(*clauses: WireScopeClause) -> WireSearchScope:
    return WireSearchScope(clauses=clauses)


def scoped(query: str, level: QueryLevel, search_scope: WireSearchScope | None, **uids: str) -> SearchQuery:
    pairs = [tuple(part.split("=", 1)) for part in query.split("&")] if query else []
    parsed = parse_search(pairs, level=level, max_limit=100, **uids)  # type: ignore[arg-type]
    return replace(parsed, scope=search_scope)


@pytest.mark.parametrize(
    ("clause", "expected"),
    [
        (WireScopeClause(facility_finess=F), {"q.facility_finess": F}),
        (WireScopeClause(patient_keys=(P2, P1)), {"q.patient_key": {"$in": [P1, P2]}}),
        (WireScopeClause(patient_keys=(P1,)), {"q.patient_key": P1}),
        (WireScopeClause(study_instance_uids=(S1, S2)), {"_id": {"$in": [S1, S2]}}),
        (
            WireScopeClause(facility_finess=F, referring_physician_rpps=RPPS),
            {"q.facility_finess": F, "q.referring_physician_rpps": RPPS},
        ),
        (
            WireScopeClause(facility_finess=F, performing_technician_rpps=RPPS),
            {"q.facility_finess": F, "q.performing_technician_rpps": RPPS},
        ),
        # Exclusions alone are $nin; exclusions from a list are taken out of it.
        (
            WireScopeClause(
                facility_finess=F, excluded_patient_keys=(P2, P1), excluded_study_instance_uids=(S3,)
            ),
            {"q.facility_finess": F, "q.patient_key": {"$nin": [P1, P2]}, "_id": {"$nin": [S3]}},
        ),
        (
            WireScopeClause(patient_keys=(P1, P2, P3), excluded_patient_keys=(P2,)),
            {"q.patient_key": {"$in": [P3, P1]}},  # sorted: "ins:" before "pid:"
        ),
        (
            WireScopeClause(
                facility_finess=F,
                patient_keys=(P1,),
                study_instance_uids=(S1, S2),
                excluded_study_instance_uids=(S2,),
            ),
            {"q.facility_finess": F, "q.patient_key": P1, "_id": S1},
        ),
    ],
)
def test_a_clause_is_the_conjunction_of_its_conditions(
    clause: WireScopeClause, expected: dict[str, Any]
) -> None:
    assert compile_scope(scope(clause), QueryLevel.STUDY) == expected


@pytest.mark.parametrize(
    ("level", "study_field"),
    [(QueryLevel.STUDY, "_id"), (QueryLevel.SERIES, "study_uid"), (QueryLevel.INSTANCE, "study_uid")],
)
def test_every_level_filters_on_the_same_copied_fields_and_its_study_uid_field(
    level: QueryLevel, study_field: str
) -> None:
    compiled = compile_scope(
        scope(
            WireScopeClause(facility_finess=F, excluded_study_instance_uids=(S3,)),
            WireScopeClause(patient_keys=(P1, P2)),
            WireScopeClause(study_instance_uids=(S1,)),
        ),
        level,
    )
    assert compiled == {
        "$or": [
            {"q.facility_finess": F, study_field: {"$nin": [S3]}},
            {"q.patient_key": {"$in": [P1, P2]}},
            {study_field: S1},
        ]
    }


def test_a_scope_permitting_nothing_compiles_to_no_filter() -> None:
    assert compile_scope(scope(), QueryLevel.STUDY) is None
    # Clauses no study can satisfy (an empty list, a list all excluded) are left out.
    nothing = scope(
        WireScopeClause(patient_keys=()),
        WireScopeClause(study_instance_uids=(S1,), excluded_study_instance_uids=(S1,)),
    )
    assert compile_scope(nothing, QueryLevel.SERIES) is None
    assert compile_scope(
        scope(WireScopeClause(patient_keys=()), WireScopeClause(facility_finess=F)), QueryLevel.STUDY
    ) == {"q.facility_finess": F}


def test_a_clause_without_condition_permits_everything_and_duplicates_are_merged() -> None:
    assert compile_scope(scope(WireScopeClause(facility_finess=F), WireScopeClause()), QueryLevel.STUDY) == {}
    twice = scope(WireScopeClause(facility_finess=F), WireScopeClause(facility_finess=F))
    assert compile_scope(twice, QueryLevel.STUDY) == {"q.facility_finess": F}


def test_the_scope_is_one_more_condition_of_the_search() -> None:
    facility_or_patients = scope(WireScopeClause(facility_finess=F), WireScopeClause(patient_keys=(P1, P2)))
    either = {"$or": [{"q.facility_finess": F}, {"q.patient_key": {"$in": [P1, P2]}}]}
    # Alone, it is the whole filter; with matching keys, and with the target resource, one more $and term.
    assert compile_filter(scoped("", QueryLevel.STUDY, facility_or_patients)) == either
    assert compile_filter(scoped("PatientID=IPP-1", QueryLevel.STUDY, facility_or_patients)) == {
        "$and": [{"q.PatientID": "IPP-1"}, either]
    }
    assert compile_filter(
        scoped("Modality=CT", QueryLevel.INSTANCE, facility_or_patients, study_instance_uid=S1)
    ) == {"$and": [{"study_uid": S1}, {"q.Modality": "CT"}, either]}
    # No scope: unscoped; a scope permitting everything: nothing more; a scope permitting nothing: no filter.
    assert compile_filter(scoped("PatientID=IPP-1", QueryLevel.SERIES, None)) == {"q.PatientID": "IPP-1"}
    assert compile_filter(scoped("PatientID=IPP-1", QueryLevel.SERIES, scope(WireScopeClause()))) == {
        "q.PatientID": "IPP-1"
    }
    assert compile_filter(scoped("PatientID=IPP-1", QueryLevel.SERIES, scope())) is None


def test_a_query_knows_when_its_scope_permits_nothing() -> None:
    assert scoped("", QueryLevel.STUDY, scope()).permits_nothing
    assert not scoped("", QueryLevel.STUDY, None).permits_nothing
    assert not scoped("", QueryLevel.STUDY, scope(WireScopeClause(facility_finess=F))).permits_nothing
