"""``python -m bench``: start both systems, play every scenario, write ``docs/benchmarks.md`` and its charts.

    python -m bench                        # the issue's scale (BENCH_SCALE, default full)
    python -m bench --scale small          # the reduced-scale trial
    python -m bench --only stow,wado       # some scenarios (a partial report: for development)
    python -m bench --render docs/benchmarks/results.json   # the report again from saved results
    python -m bench --only qido --add-to docs/benchmarks/results.json   # a second sitting of one run

``--add-to``: the chosen scenarios run again on the same commit and scale and replace theirs in a saved run;
the report then lists both sittings (a full run is long: the QIDO-RS catalog can be its own sitting).

Run from the repository root (``make bench`` bootstraps, provisions and installs what it needs first).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import signal
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.config import PROFILE, default_report, scale_from, work_dir
from bench.report import SCENARIO_KEYS, render
from bench.results import Results, load


def _scenario_runners() -> dict[str, Callable[[Any], None]]:
    from bench.scenarios import dimse, freshness, memory, qido, reference, stow, wado

    return {
        "reference": reference.run,
        "qido": qido.run,
        "stow": stow.run,
        "dimse": dimse.run,
        "wado": wado.run,
        "freshness": freshness.run,
        "memory": memory.run,
    }


def write_report(context: dict[str, Any], results: Results, output: Path) -> None:
    """``output`` (Markdown), its charts and the raw results in the folder named after it."""
    from bench import charts

    folder = output.parent / output.stem
    results.save(folder / "results.json", context)
    drawn = charts.render(results, folder)
    links = {key: path.relative_to(output.parent).as_posix() for key, path in drawn.items()}
    output.write_text(render(context, results, links))


_LOAD_AT_START = "load average at start (1, 5, 15 min)"
_LOAD_AT_END = "load average at end (1, 5, 15 min)"


def _earlier_sitting(
    saved: Path, context: dict[str, Any], chosen: list[str]
) -> tuple[dict[str, Any], Results]:
    """The saved run ``saved`` without the ``chosen`` scenarios' results, its context extended by this
    sitting. Refused unless this sitting measures what the saved one did: the same scale and machine, the
    same e-mage commit, and no uncommitted change outside ``docs/`` in either sitting."""
    from bench.machine import emage_commit

    earlier, results = load(saved)
    if earlier["scale"] != context["scale"]:
        raise SystemExit(f"{saved} was measured at another scale: run it again whole")
    hardware = ("cores", "memory", "cpu", "kernel", "os")
    if any(earlier.get("machine", {}).get(key) != context["machine"].get(key) for key in hardware):
        raise SystemExit(f"{saved} was measured on another machine: run it again whole")
    commit = emage_commit().split(" ")[0]
    earlier_commit = str(earlier.get("versions", {}).get("e-mage", "")).split(" ")[0]
    if commit != earlier_commit:
        raise SystemExit(f"{saved} measured e-mage {earlier_commit}, this is {commit}: run it again whole")
    sittings = earlier.get("sittings") or [
        {
            **{key: earlier.get(key) for key in ("started", "command", "scenarios", "duration_s")},
            _LOAD_AT_START: earlier.get("machine", {}).get(_LOAD_AT_START),
            _LOAD_AT_END: earlier.get("machine", {}).get(_LOAD_AT_END),
        }
    ]
    changed = [path for sitting in (*sittings, *context["sittings"]) for path in sitting.get("changes", [])]
    if changed:
        raise SystemExit(f"uncommitted changes were or are measured ({', '.join(sorted(set(changed)))})")
    for key in chosen:
        results.failures.pop(key, None)
        results.notes.pop(key, None)
        results.facts.pop(key, None)
        results.traces.pop(key, None)
    results.metrics = [metric for metric in results.metrics if metric.scenario not in chosen]
    # The scenarios this sitting measures again are no longer the earlier sittings' own.
    kept = [
        {**sitting, "scenarios": [key for key in sitting.get("scenarios") or [] if key not in chosen]}
        for sitting in sittings
    ]
    merged = {
        **earlier,
        "sittings": [*(sitting for sitting in kept if sitting["scenarios"]), *context["sittings"]],
        "scenarios": [key for key in SCENARIO_KEYS if key in {*earlier["scenarios"], *chosen}],
    }
    return merged, results


def _same_versions(earlier: dict[str, str], now: dict[str, str]) -> None:
    """Refuse a sitting whose servers or libraries differ from the saved run's (e-mage is checked apart)."""
    differ = sorted(
        key for key in earlier.keys() & now.keys() if key != "e-mage" and earlier[key] != now[key]
    )
    if differ:
        raise SystemExit(f"versions differ from the saved run's ({', '.join(differ)}): run it again whole")


def _stop_on_sigterm() -> None:
    """SIGTERM (``make`` interrupted, a CI timeout) unwinds like Ctrl-C: every process is stopped by PID."""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def _measure(args: argparse.Namespace) -> int:
    from bench.environment import BenchStack, log
    from bench.machine import machine, measured_changes, versions
    from bench.run import Run

    scale = scale_from(os.environ, args.scale, args.repetitions)
    chosen = [key for key in SCENARIO_KEYS if not args.only or key in args.only]
    unknown = set(args.only or ()) - set(SCENARIO_KEYS)
    if unknown:
        raise SystemExit(f"unknown scenario(s) {sorted(unknown)}: choose among {', '.join(SCENARIO_KEYS)}")
    if scale.repetitions < 5:
        log(f"{scale.repetitions} repetitions: fewer than the 5 a published result needs")
    started_at = datetime.now(UTC)
    started = time.monotonic()
    context: dict[str, Any] = {
        "scale": dataclasses.asdict(scale),
        "machine": machine(),
        "started": started_at.strftime("%Y-%m-%d %H:%M UTC"),
        "profile": PROFILE,
        "command": args.command_line,
        "scenarios": chosen,
        "sittings": [],
    }
    context["sittings"].append(
        {
            "started": context["started"],
            "command": args.command_line,
            "scenarios": chosen,
            _LOAD_AT_START: context["machine"].get(_LOAD_AT_START),
            "changes": measured_changes(),
        }
    )
    results = Results()
    if args.add_to is not None:
        context, results = _earlier_sitting(args.add_to, context, chosen)
    log(f"scale {scale.name}: {', '.join(chosen)}")
    _stop_on_sigterm()
    # Everything imported (and matplotlib's backend and fonts loaded) before the long run: a `uv sync`
    # without the bench group meanwhile (another checkout's `make test`) cannot break the end of it.
    runners = _scenario_runners()
    from bench import charts

    charts.warm_up()
    systems = BenchStack.start()
    try:
        if args.add_to is not None:
            _same_versions(context["versions"], versions(systems))
        else:
            context["versions"] = versions(systems)
        run = Run(systems, scale, results, work_dir())
        for key in chosen:
            began = time.monotonic()
            log(f"scenario {key}")
            try:
                runners[key](run)
            except Exception as error:
                traceback.print_exc()
                results.failures[key] = f"{type(error).__name__}: {error}"[:500]
            log(f"scenario {key}: {time.monotonic() - began:.0f}s")
    finally:
        systems.stop()
    sitting = context["sittings"][-1]
    sitting["duration_s"] = time.monotonic() - started
    sitting[_LOAD_AT_END] = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    context["duration_s"] = sum(float(each.get("duration_s") or 0) for each in context["sittings"])
    if len(context["sittings"]) == 1:
        context["machine"][_LOAD_AT_END] = sitting[_LOAD_AT_END]
    else:
        # Each sitting's load is listed with it; the machine table keeps only what does not change.
        for key in (_LOAD_AT_START, _LOAD_AT_END):
            context["machine"].pop(key, None)
    write_report(context, results, args.output)
    log(f"wrote {args.output}")
    return 1 if results.failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", choices=("full", "small"), help="default: BENCH_SCALE, else full")
    parser.add_argument("--repetitions", type=int, help="default: BENCH_REPETITIONS, else 5")
    parser.add_argument(
        "--only",
        type=lambda text: [part.strip() for part in text.split(",") if part.strip()],
        help="scenarios",
    )
    parser.add_argument("--output", type=Path, default=default_report(), help="default: docs/benchmarks.md")
    parser.add_argument(
        "--render", type=Path, help="render the report from a saved results.json, run nothing"
    )
    parser.add_argument(
        "--add-to",
        type=Path,
        help="a saved results.json of the same commit and scale: run the scenarios as its next sitting",
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        context, results = load(args.render)
        write_report(context, results, args.output)
        return 0
    given = argv if argv is not None else sys.argv[1:]
    scale = os.environ.get("BENCH_SCALE")
    if given:
        args.command_line = f"python -m bench {shlex.join(given)}"
    else:
        args.command_line = f"BENCH_SCALE={scale} make bench" if scale and scale != "full" else "make bench"
    return _measure(args)


if __name__ == "__main__":
    sys.exit(main())
