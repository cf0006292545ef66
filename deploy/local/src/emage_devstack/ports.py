"""Loopback ports of each profile: ``run`` (make run) and ``test`` (make test) can be up side by side."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Ports:
    kafka: int
    kafka_controller: int
    mongo: int
    s3: int
    s3_master: int
    s3_volume: int
    s3_filer: int
    keycloak: int
    keycloak_management: int
    access: int
    ingest: int
    catalog: int
    consent: int
    audit: int
    dimse: int


PROFILES: dict[str, Ports] = {
    "run": Ports(
        kafka=9092,
        kafka_controller=9093,
        mongo=27017,
        s3=8333,
        s3_master=9333,
        s3_volume=8090,
        s3_filer=8888,
        keycloak=8180,
        keycloak_management=9000,
        access=8080,
        ingest=8081,
        catalog=8082,
        consent=8083,
        audit=8084,
        dimse=11112,
    ),
    "test": Ports(
        kafka=19092,
        kafka_controller=19093,
        mongo=27117,
        s3=18333,
        s3_master=19333,
        s3_volume=18090,
        s3_filer=18888,
        keycloak=18180,
        keycloak_management=19000,
        access=18080,
        ingest=18081,
        catalog=18082,
        consent=18083,
        audit=18084,
        dimse=21112,
    ),
}


def ports_for(profile: str) -> Ports:
    """``run``, ``test``, or ``test<N>`` (N = 1..9): a block of 15 ports at 30000 + 100·N.

    The numbered profiles let several test sessions run side by side on one machine (a developer's
    parallel runs, a clean-clone CI check), each with its own servers and data under ``.local/<profile>``.
    """
    if profile in PROFILES:
        return PROFILES[profile]
    suffix = profile.removeprefix("test")
    if profile.startswith("test") and suffix.isdigit() and 1 <= int(suffix) <= 9:
        base = 30000 + 100 * int(suffix)
        return Ports(*(base + index for index in range(len(fields(Ports)))))
    raise ValueError(f"unknown profile {profile!r}: use run, test or test1..test9")
