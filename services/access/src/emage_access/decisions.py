"""The policy enforcement point: every request touching patient data is decided here, then audited.

:class:`AccessDecider` gathers what the pure policy needs — the study's attributes from the catalog, the
caller's shares and break-the-glass grants from the access database, the consent view built from
``consent.changed`` — calls :func:`~emage_access.domain.policy.decide` (or
:func:`~emage_access.domain.links.decide_link` for a share-link holder), and publishes exactly one
``access.decided`` event per decision, allowed or denied, before the request goes any further. If the
audit event cannot be made durable, nothing is disclosed: the request fails with 503.

Forbidden and unknown look alike: routes answer every denied decision about a study with :func:`not_found`,
the very answer an unknown Study Instance UID gets.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from aiokafka.errors import KafkaError
from fastapi import HTTPException, Request
from prometheus_client import Counter

from emage_access.domain.consent_view import ConsentView
from emage_access.domain.links import LinkSession, decide_link
from emage_access.domain.policy import (
    Action,
    BreakGlass,
    Decision,
    PolicySettings,
    Reason,
    SearchScope,
    Share,
    StudyAttributes,
    decide,
    search_scope,
)
from emage_access.domain.principal import HEALTH_PROFESSIONAL_ROLES, Principal
from emage_access.ports import BreakGlassStore, ShareStore, StudyDirectory
from emage_common.access_contract import WireScopeClause, WireSearchScope
from emage_common.events import AccessAction, AccessDecided, make_event
from emage_common.events import Principal as AuditPrincipal
from emage_common.kafka import EventPublisher

_log = logging.getLogger(__name__)

SOURCE: Final = "/emage/access"

DECISIONS = Counter(
    "emage_access_decisions",
    "Access decisions audited, by action, outcome and machine reason.",
    ["action", "outcome", "reason"],
)
"""``emage_access_decisions_total``: denials by reason show probing and misconfigured grants at a glance."""
NOT_FOUND_DETAIL: Final = "No such study, series or instance."


def not_found() -> HTTPException:
    """The answer to an unknown resource, and therefore to a forbidden one."""
    return HTTPException(404, NOT_FOUND_DETAIL)


@dataclass(frozen=True, slots=True)
class Decided:
    """A decision and the study it was about (None when the catalog does not hold it)."""

    decision: Decision
    study: StudyAttributes | None

    @property
    def allowed(self) -> bool:
        return self.decision.allowed


class AuditUnavailableError(Exception):
    """The ``access.decided`` event could not be made durable: the request must not proceed."""


class AccessDecider:
    """Decides and audits; one instance per gateway process (``app.state.decider``)."""

    def __init__(
        self,
        *,
        directory: StudyDirectory,
        consent: ConsentView,
        shares: ShareStore,
        break_glass: BreakGlassStore,
        publisher: EventPublisher,
        settings: PolicySettings,
    ) -> None:
        self._directory = directory
        self._consent = consent
        self._shares = shares
        self._break_glass = break_glass
        self._publisher = publisher
        self._settings = settings

    async def decide(
        self,
        caller: Principal | LinkSession,
        action: Action,
        study_instance_uid: str | None,
        *,
        request: Request,
        requested_break_glass: BreakGlass | None = None,
        justification: str | None = None,
        audit_action: AccessAction | None = None,
        new_study_allowed: bool = False,
    ) -> Decided:
        """Decide ``action`` by ``caller`` on the study (None: no single study), and audit the decision.

        ``new_study_allowed``: an unknown study is a new one being stored (STOW-RS to ``/studies/{uid}``),
        decided like an upload without a study rather than denied as unknown.
        """
        now = datetime.now(UTC)
        study, (shares, grants) = await self._facts(caller, study_instance_uid, now)
        if requested_break_glass is not None:
            grants.append(requested_break_glass)
        return await self._decide(
            caller,
            action,
            study_instance_uid,
            study,
            shares,
            grants,
            now=now,
            request=request,
            justification=justification,
            audit_action=audit_action,
            new_study_allowed=new_study_allowed,
        )

    async def search(
        self, caller: Principal | LinkSession, study_instance_uid: str | None, *, request: Request
    ) -> tuple[Decided, WireSearchScope]:
        """Decide and audit a QIDO-RS search, and the scope the catalog applies to it, from one read of
        the caller's shares and grants."""
        now = datetime.now(UTC)
        study, (shares, grants) = await self._facts(caller, study_instance_uid, now)
        decided = await self._decide(
            caller, Action.SEARCH, study_instance_uid, study, shares, grants, now=now, request=request
        )
        if isinstance(caller, LinkSession):
            scope = WireSearchScope(
                clauses=(WireScopeClause(study_instance_uids=(caller.study_instance_uid,)),)
            )
        else:
            scope = wire_scope(search_scope(caller, self._consent, shares, grants, now, self._settings))
        return decided, scope

    async def _facts(
        self, caller: Principal | LinkSession, study_instance_uid: str | None, now: datetime
    ) -> tuple[StudyAttributes | None, tuple[list[Share], list[BreakGlass]]]:
        """The study's attributes, the caller's shares and break-the-glass grants, read concurrently."""

        async def study() -> StudyAttributes | None:
            if study_instance_uid is None:
                return None
            return await self._directory.attributes(study_instance_uid)

        async def grants() -> tuple[list[Share], list[BreakGlass]]:
            if isinstance(caller, LinkSession):
                return [], []
            return await asyncio.gather(self._shares_of(caller), self._grants_of(caller, now))

        return await asyncio.gather(study(), grants())

    async def _decide(
        self,
        caller: Principal | LinkSession,
        action: Action,
        study_instance_uid: str | None,
        study: StudyAttributes | None,
        shares: list[Share],
        grants: list[BreakGlass],
        *,
        now: datetime,
        request: Request,
        justification: str | None = None,
        audit_action: AccessAction | None = None,
        new_study_allowed: bool = False,
    ) -> Decided:
        if isinstance(caller, LinkSession):
            decision = decide_link(caller, action, study_instance_uid, now)
        elif study_instance_uid is not None and study is None and not new_study_allowed:
            decision = Decision.deny(Reason.STUDY_UNKNOWN)
        else:
            decision = decide(
                caller,
                action,
                study,
                consent=self._consent,
                shares=shares,
                break_glass=grants,
                now=now,
                settings=self._settings,
            )
            if decision.basis == "break_glass" and justification is None:
                # A request made under a break-the-glass grant is audited with the grant's justification.
                justification = next(
                    (g.justification for g in grants if g.study_instance_uid == study_instance_uid), None
                )
        await self._audit(
            caller,
            audit_action or action.value,
            study_instance_uid,
            study,
            decision,
            request=request,
            justification=justification,
            now=now,
        )
        return Decided(decision, study)

    async def _shares_of(self, principal: Principal) -> list[Share]:
        if principal.rpps is None or principal.role not in HEALTH_PROFESSIONAL_ROLES:
            return []
        return await self._shares.shares_to(principal.rpps)

    async def _grants_of(self, principal: Principal, now: datetime) -> list[BreakGlass]:
        if principal.rpps is None or principal.role not in self._settings.break_glass_roles:
            return []
        return list(await self._break_glass.grants_of(principal.rpps, now=now))

    async def refuse_link(
        self,
        *,
        link_id: str | None,
        study_instance_uid: str | None,
        patient_key: str | None,
        reason: str,
        request: Request,
    ) -> None:
        """Audit a share link that did not open (wrong secret or factor, expired, revoked, locked...)."""
        who = AuditPrincipal(subject=f"link:{link_id or 'unknown'}", role="link_holder")
        await self._publish(
            who,
            "open_link",
            study_instance_uid,
            patient_key,
            Decision(allowed=False, reason=reason),
            request=request,
            justification=None,
            now=datetime.now(UTC),
        )

    async def _audit(
        self,
        caller: Principal | LinkSession,
        action: AccessAction,
        study_instance_uid: str | None,
        study: StudyAttributes | None,
        decision: Decision,
        *,
        request: Request,
        justification: str | None,
        now: datetime,
    ) -> None:
        if isinstance(caller, LinkSession):
            who = AuditPrincipal(subject=caller.subject, role="link_holder")
            patient_key: str | None = caller.patient_key
        else:
            who = AuditPrincipal(
                subject=caller.subject,
                role=caller.role.value,
                rpps=caller.rpps,
                facility_finess=caller.facility_finess,
                name=caller.name,
                facility_name=caller.facility_name,
            )
            patient_key = study.patient_key if study is not None else None
        await self._publish(
            who,
            action,
            study_instance_uid,
            patient_key,
            decision,
            request=request,
            justification=justification,
            now=now,
        )

    async def _publish(
        self,
        who: AuditPrincipal,
        action: AccessAction,
        study_instance_uid: str | None,
        patient_key: str | None,
        decision: Decision,
        *,
        request: Request,
        justification: str | None,
        now: datetime,
    ) -> None:
        request_id = getattr(request.state, "request_id", None) or "unknown"
        justification = justification.strip() if justification and justification.strip() else None
        data = AccessDecided(
            request_id=request_id,
            principal=who,
            action=action,
            study_instance_uid=study_instance_uid,
            patient_key=patient_key,
            decision="allow" if decision.allowed else "deny",
            basis=decision.basis,
            reason=decision.reason,
            justification=justification,
            client_address=request.client.host if request.client is not None else None,
            decided_at=now,
        )
        event = make_event(data, SOURCE, subject=study_instance_uid)
        try:
            await self._publisher.publish(data.topic, event)
        except KafkaError as error:
            _log.error("access.decided could not be published: %s", error)
            raise AuditUnavailableError from error
        DECISIONS.labels(action, data.decision, decision.reason).inc()


def wire_scope(scope: SearchScope) -> WireSearchScope:
    """The policy's search scope in the catalog's wire form."""

    def sorted_or_none(values: frozenset[str] | None) -> tuple[str, ...] | None:
        return None if values is None else tuple(sorted(values))

    return WireSearchScope(
        clauses=tuple(
            WireScopeClause(
                facility_finess=clause.facility_finess,
                patient_keys=sorted_or_none(clause.patient_keys),
                study_instance_uids=sorted_or_none(clause.study_instance_uids),
                referring_physician_rpps=clause.referring_physician_rpps,
                performing_technician_rpps=clause.performing_technician_rpps,
                excluded_patient_keys=tuple(sorted(clause.excluded_patient_keys)),
                excluded_study_instance_uids=tuple(sorted(clause.excluded_study_instance_uids)),
            )
            for clause in scope.clauses
        )
    )


async def get_decider(request: Request) -> AccessDecider:
    """FastAPI dependency: the process's decider."""
    decider: AccessDecider = request.app.state.decider
    return decider
