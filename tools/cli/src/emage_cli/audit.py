"""``emage audit``: the audit trail, from the command line.

``emage audit verify [--url URL] [--token TOKEN]`` asks the platform to recompute the audit chain and its
signed checkpoints, prints the outcome and names the first broken record. It calls the gateway, as the DPO:
the audit service is reachable only from inside the platform, and the gateway authenticates the caller,
checks they may verify the trail, and records that they did (a verification is itself audited).

Exit status: 0 the chain is intact, 1 it is broken, 2 the verification could not be run.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import httpx
import typer
from rich.console import Console

app = typer.Typer(name="audit", help="The audit trail: verify its hash chain.", no_args_is_help=True)
console = Console(stderr=True)

DEFAULT_GATEWAY_URL: Final = "http://127.0.0.1:8080"
VERIFY_PATH: Final = "/api/v1/audit/verify"


@app.callback()
def audit() -> None:
    """The audit trail: verify its hash chain (through the gateway, as the DPO)."""


def request_verification(
    url: str, token: str, *, timeout: float = 300.0, transport: httpx.BaseTransport | None = None
) -> dict[str, Any]:
    """POST the verification to the gateway at ``url`` with a bearer ``token``; the report it answers.

    Raises :class:`httpx.HTTPStatusError` for a refusal and :class:`httpx.HTTPError` when unreachable.
    """
    with httpx.Client(base_url=url, timeout=timeout, transport=transport) as client:
        response = client.post(VERIFY_PATH, headers={"Authorization": f"Bearer {token}"})
        response.raise_for_status()
        report: dict[str, Any] = response.json()
        return report


def describe(report: dict[str, Any]) -> str:
    """One paragraph for people: intact or where it breaks."""
    checked = report.get("records_checked", 0)
    span = f"records {report.get('first_seq')} to {report.get('last_seq')}" if checked else "no record"
    anchored = report.get("anchored_through")
    anchor = f"; signed checkpoints vouch for it up to {anchored}" if anchored is not None else ""
    if report.get("valid"):
        return (
            f"The audit chain is intact: {checked} records checked ({span}), "
            f"{report.get('checkpoints_checked', 0)} signed checkpoints verified{anchor}."
        )
    broken = report.get("broken") or {}
    return (
        f"The audit chain is BROKEN at record {broken.get('seq')} ({broken.get('reason')}): "
        f"{broken.get('detail')}. {checked} records before it are intact{anchor}."
    )


@app.command("verify")
def verify(
    url: Annotated[str, typer.Option(help="The gateway's base URL.")] = DEFAULT_GATEWAY_URL,
    token: Annotated[
        str | None, typer.Option(envvar="EMAGE_TOKEN", help="A DPO's bearer access token.")
    ] = None,
) -> None:
    """Recompute the audit chain and its signed checkpoints; name the first broken record."""
    if not token:
        console.print("[red]a DPO's access token is needed: --token or EMAGE_TOKEN[/]")
        raise typer.Exit(2)
    try:
        report = request_verification(url, token)
    except httpx.HTTPStatusError as error:
        console.print(f"[red]the gateway refused the verification: HTTP {error.response.status_code}[/]")
        raise typer.Exit(2) from None
    except httpx.HTTPError as error:
        console.print(f"[red]cannot reach the gateway at {url}: {error}[/]")
        raise typer.Exit(2) from None
    valid = bool(report.get("valid"))
    console.print(describe(report), style="green" if valid else "bold red")
    raise typer.Exit(0 if valid else 1)
