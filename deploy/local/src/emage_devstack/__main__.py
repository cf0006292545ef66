"""``emage-devstack``: provision and run the native local stack (no Docker).

emage-devstack provision            fetch Kafka, Keycloak (Maven Central), the OHIF viewer (npm), check
                                    mongod and weed
emage-devstack up [--profile run]   start everything, wait for every /readyz, stay in the foreground;
                                    load the demo studies into an empty archive (unless --no-demo)
emage-devstack env [--profile run]  print the EMAGE_* variables to run one service by hand

``up`` and ``env`` take ``--otlp-endpoint URL`` (default ``$EMAGE_DEVSTACK_OTLP_ENDPOINT``): the services
then export their traces over OTLP/HTTP to that receiver (a local Jaeger or OpenTelemetry Collector).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
import time

from .dev_users import DEV_USERS
from .ports import ports_for
from .process import ManagedProcess
from .stack import SERVICES, Stack


def _profile(name: str) -> str:
    try:
        ports_for(name)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return name


def _banner(stack: Stack, started: float) -> str:
    lines = [
        "",
        f"e-mage is up ({time.monotonic() - started:.0f}s) — profile '{stack.profile}'",
        f"  gateway (access)   {stack.service_url('access')}    OpenAPI {stack.service_url('access')}/docs",
        f"  viewer (OHIF)      {stack.service_url('access')}/viewer/",
    ]
    for name in SERVICES:
        if name != "access":
            lines.append(f"  {name:<18} {stack.service_url(name)}")
    lines += [
        f"  Keycloak           {stack.keycloak.url}   (realm emage; admin console: admin / admin, dev only)",
        f"  Kafka              {stack.kafka.bootstrap_servers}",
        f"  MongoDB            {stack.mongo.uri}",
        f"  S3 (SeaweedFS)     {stack.s3.endpoint_url}   bucket emage-archive",
        "  dev users (password = username; professionals also need their TOTP, see README):",
    ]
    lines += [
        f"    {u.username:<15} {u.role}" + (f" @ {u.facility_name}" if u.facility_name else "")
        for u in DEV_USERS
    ]
    lines += [f"  logs under {stack.logs_dir()}", "Ctrl-C stops everything.", ""]
    return "\n".join(lines)


def _stop_with_parent() -> None:
    """Get SIGTERM when the parent (``make run``) dies first: a SIGTERM sent to make alone stops all."""
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _start_demo(stack: Stack) -> ManagedProcess | None:
    """Generate (once, cached) and import the demo studies by STOW-RS, if the archive is empty."""
    from pymongo import MongoClient

    client: MongoClient[dict[str, object]] = MongoClient(stack.mongo.uri, serverSelectionTimeoutMS=5000)
    try:
        if client["ingest"]["instances"].find_one({}, {"_id": 1}) is not None:
            return None
    finally:
        client.close()
    command = [sys.executable, "-m", "emage_cli", "demo", "--url", stack.service_url("ingest")]
    print("demo studies: the archive is empty, loading them in the background", file=sys.stderr, flush=True)
    # Its own process group: stopping it by its PID also stops the generator's worker processes.
    demo = ManagedProcess("demo", command, stack.logs_dir() / "services" / "demo.log")
    demo.start()
    return demo


def _up(args: argparse.Namespace) -> int:
    started = time.monotonic()
    demo: ManagedProcess | None = None
    _stop_with_parent()
    stack = Stack(args.profile, otlp_endpoint=args.otlp_endpoint)
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        stack.provision()
        stack.start_infrastructure(wipe=args.wipe)
        stack.start_services()
        demo = None if args.no_demo else _start_demo(stack)
        print(_banner(stack, started), flush=True)
        while not stop.wait(1.0):
            if demo is not None and not demo.running():
                verdict = "loaded" if demo.returncode == 0 else f"import ended with status {demo.returncode}"
                print(f"demo studies: {verdict} (log {demo.log_path})", file=sys.stderr, flush=True)
                demo = None
            dead = [name for name, proc in stack.services.items() if not proc.running()]
            if dead:
                print(f"service(s) exited: {', '.join(dead)}; see their logs. Stopping.", file=sys.stderr)
                return 1
        return 0
    finally:
        print("stopping e-mage…", file=sys.stderr, flush=True)
        if demo is not None:
            demo.stop(timeout=10)
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="emage-devstack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("provision", help="download and unpack the servers (idempotent)")
    up = sub.add_parser("up", help="start the stack and the services; Ctrl-C stops all")
    up.add_argument("--profile", type=_profile, default="run", help="run, test or test1..test9")
    up.add_argument("--wipe", action="store_true", help="start from empty data")
    up.add_argument(
        "--no-demo", action="store_true", help="do not load the demo studies into an empty archive"
    )
    env = sub.add_parser("env", help="print the services' environment for this profile")
    env.add_argument("--profile", type=_profile, default="run", help="run, test or test1..test9")
    for command in (up, env):
        command.add_argument(
            "--otlp-endpoint",
            default=os.environ.get("EMAGE_DEVSTACK_OTLP_ENDPOINT") or None,
            help="OTLP/HTTP trace receiver the services export to, e.g. http://127.0.0.1:4318",
        )
    args = parser.parse_args(argv)

    if args.command == "provision":
        Stack("run").provision()
        return 0
    if args.command == "env":
        for key, value in sorted(Stack(args.profile, otlp_endpoint=args.otlp_endpoint).service_env().items()):
            print(f"export {key}={shlex.quote(value)}")
        return 0
    return _up(args)


if __name__ == "__main__":
    sys.exit(main())
