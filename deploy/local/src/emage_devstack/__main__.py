"""``emage-devstack``: provision and run the native local stack (no Docker).

emage-devstack provision            fetch Kafka, Keycloak (Maven Central), check mongod and weed
emage-devstack up [--profile run]   start everything, wait for every /readyz, stay in the foreground
emage-devstack env [--profile run]  print the EMAGE_* variables to run one service by hand
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
import time

from .dev_users import DEV_USERS
from .ports import ports_for
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


def _up(args: argparse.Namespace) -> int:
    started = time.monotonic()
    _stop_with_parent()
    stack = Stack(args.profile)
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        stack.provision()
        stack.start_infrastructure(wipe=args.wipe)
        stack.start_services()
        print(_banner(stack, started), flush=True)
        while not stop.wait(1.0):
            dead = [name for name, proc in stack.services.items() if not proc.running()]
            if dead:
                print(f"service(s) exited: {', '.join(dead)}; see their logs. Stopping.", file=sys.stderr)
                return 1
        return 0
    finally:
        print("stopping e-mage…", file=sys.stderr, flush=True)
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
    env = sub.add_parser("env", help="print the services' environment for this profile")
    env.add_argument("--profile", type=_profile, default="run", help="run, test or test1..test9")
    args = parser.parse_args(argv)

    if args.command == "provision":
        Stack("run").provision()
        return 0
    if args.command == "env":
        for key, value in sorted(Stack(args.profile).service_env().items()):
            print(f"export {key}={shlex.quote(value)}")
        return 0
    return _up(args)


if __name__ == "__main__":
    sys.exit(main())
