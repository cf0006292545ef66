"""The professional directory: what is recorded from tokens, how it is searched, who may search."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from emage_access.adapters.professionals import search_filter
from emage_access.professionals import Professional, SearchTerms, fold, name_words

Sign = Callable[[dict[str, object]], str]


class Directory:
    """An in-memory directory with the Mongo adapter's matching rule (word prefixes, RPPS prefix)."""

    def __init__(self, *entries: Professional) -> None:
        self.entries = {entry.rpps: entry for entry in entries}
        self.recorded: list[Professional] = []
        self.fail = False

    async def record(self, professional: Professional, now: datetime) -> None:
        if self.fail:
            raise RuntimeError("database down")
        self.recorded.append(professional)
        self.entries[professional.rpps] = professional

    async def search(self, terms: SearchTerms, limit: int) -> list[Professional]:
        def matches(entry: Professional) -> bool:
            if terms.rpps_prefix is not None:
                return entry.rpps.startswith(terms.rpps_prefix)
            words = name_words(entry.name)
            return all(any(word.startswith(term) for word in words) for term in terms.words)

        return sorted(filter(matches, self.entries.values()), key=lambda entry: fold(entry.name or ""))[
            :limit
        ]


GIRARD = Professional("10100000057", "Paul Girard", "radiologist", "690000002", "Clinique Beta")
DUBOIS = Professional("10100000016", "Claire Dubois", "radiologist", "750000001", "CHU Alpha")
DUPRE = Professional("10100000099", "Hélène Dupré-Lefèvre", "referring_physician", "750000001", "CHU Alpha")


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("Hélène Dupré-Lefèvre", ["dupre", "helene", "lefevre"]),
        ("  JEAN  jean ", ["jean"]),
        (None, []),
        ("Œdipe Ødegård", ["odegard", "oedipe"]),
    ],
)
def test_names_are_indexed_as_folded_words(name: str | None, words: list[str]) -> None:
    assert name_words(name) == words


@pytest.mark.parametrize(
    ("query", "terms"),
    [
        ("1010", SearchTerms("1010", ())),
        (" 101000000571234 ", SearchTerms("10100000057", ())),
        ("Dupré Hél", SearchTerms(None, ("dupre", "hel"))),
        ("d", None),
        ("1", None),
        ("  ", None),
        ("--", None),
    ],
)
def test_queries_are_rpps_prefixes_or_name_word_prefixes(query: str, terms: SearchTerms | None) -> None:
    assert SearchTerms.parse(query) == terms


def test_the_mongo_filter_anchors_and_escapes_every_term() -> None:
    assert search_filter(SearchTerms("1010", ())) == {"_id": {"$regex": "^1010"}}
    assert search_filter(SearchTerms(None, ("du.*", "hel"))) == {
        "$and": [{"name_words": {"$regex": "^du\\.\\*"}}, {"name_words": {"$regex": "^hel"}}]
    }


@pytest.fixture
def directory(gateway_app: FastAPI) -> Directory:
    found = Directory(GIRARD, DUBOIS, DUPRE)
    gateway_app.state.professionals = found
    return found


@pytest.mark.parametrize(
    ("query", "rpps"),
    [
        ("girard", ["10100000057"]),
        ("helene dup", ["10100000099"]),
        ("DUPRE", ["10100000099"]),
        ("lef", ["10100000099"]),
        ("1010000001", ["10100000016"]),
        ("10100000057", ["10100000057"]),
        ("claire girard", []),
        ("x", []),
    ],
)
def test_a_patient_finds_professionals_by_name_or_rpps(
    gateway_app: FastAPI,
    directory: Directory,
    signed: Sign,
    patient_claims: dict[str, object],
    query: str,
    rpps: list[str],
) -> None:
    response = TestClient(gateway_app).get(
        "/api/v1/professionals",
        params={"q": query},
        headers={"Authorization": f"Bearer {signed(patient_claims)}"},
    )
    assert response.status_code == 200
    assert [entry["rpps"] for entry in response.json()["professionals"]] == rpps


def test_an_entry_shows_the_public_facts_only(
    gateway_app: FastAPI, directory: Directory, signed: Sign, patient_claims: dict[str, object]
) -> None:
    response = TestClient(gateway_app).get(
        "/api/v1/professionals",
        params={"q": "girard"},
        headers={"Authorization": f"Bearer {signed(patient_claims)}"},
    )
    assert response.json() == {
        "professionals": [
            {
                "rpps": "10100000057",
                "name": "Paul Girard",
                "role": "radiologist",
                "facility_finess": "690000002",
                "facility_name": "Clinique Beta",
            }
        ]
    }
    # A patient searching is not recorded: the directory lists professionals only.
    assert directory.recorded == []


@pytest.mark.parametrize("token", [None, "opaque-link-session-token"])
def test_searching_needs_an_account(gateway_app: FastAPI, directory: Directory, token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = TestClient(gateway_app).get("/api/v1/professionals", params={"q": "girard"}, headers=headers)
    assert response.status_code == 401


def test_a_professional_is_recorded_when_their_token_is_seen(
    gateway_app: FastAPI, signed: Sign, professional_claims: dict[str, object]
) -> None:
    directory = Directory()
    gateway_app.state.professionals = directory
    client = TestClient(gateway_app)
    headers = {"Authorization": f"Bearer {signed(professional_claims)}"}
    assert client.get("/api/v1/professionals", params={"q": "nobody"}, headers=headers).status_code == 200
    assert directory.recorded == [GIRARD]
    # Seen again with the same facts: not written again (once per interval per process).
    client.get("/api/v1/professionals", params={"q": "nobody"}, headers=headers)
    assert directory.recorded == [GIRARD]
    # New facts (another facility): written at once.
    moved = professional_claims | {"facility": "750000001", "facility_name": "CHU Alpha"}
    client.get(
        "/api/v1/professionals", params={"q": "girard"}, headers={"Authorization": f"Bearer {signed(moved)}"}
    )
    assert directory.recorded[-1] == Professional(
        "10100000057", "Paul Girard", "radiologist", "750000001", "CHU Alpha"
    )
    assert len(directory.recorded) == 2


def test_a_refused_token_records_nobody(
    gateway_app: FastAPI, signed: Sign, professional_claims: dict[str, object]
) -> None:
    directory = Directory()
    gateway_app.state.professionals = directory
    weak = professional_claims | {"amr": ["pwd"]}  # no second factor: 401, no principal
    response = TestClient(gateway_app).get(
        "/api/v1/professionals", params={"q": "x"}, headers={"Authorization": f"Bearer {signed(weak)}"}
    )
    assert response.status_code == 401
    assert directory.recorded == []


def test_a_directory_failure_never_fails_the_request(
    gateway_app: FastAPI, signed: Sign, professional_claims: dict[str, object]
) -> None:
    directory = Directory()
    directory.fail = True
    gateway_app.state.professionals = directory
    client = TestClient(gateway_app)
    headers = {"Authorization": f"Bearer {signed(professional_claims)}"}
    assert client.get("/api/v1/professionals", params={"q": "girard"}, headers=headers).status_code == 200
    directory.fail = False
    # The failed write is retried on the next request rather than waiting for the interval.
    client.get("/api/v1/professionals", params={"q": "girard"}, headers=headers)
    assert directory.recorded == [GIRARD]
