"""A server process started and stopped by PID (never by name), with its output in a log file."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .paths import state_dir
from .ports import Ports


class ProcessError(RuntimeError):
    """A managed process failed to start or to become ready."""


class ManagedProcess:
    """One long-running child in its own process group, so stopping it stops its children too."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has ended, None while it runs (or before it started)."""
        return self._popen.poll() if self._popen is not None else None

    def start(self) -> None:
        if self.running():
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        try:
            self._popen = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        finally:
            log.close()

    def wait_ready(self, probe: Callable[[], bool], timeout: float, interval: float = 0.2) -> None:
        """Poll ``probe`` until it returns True; fail early if the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._popen is not None and self._popen.poll() is not None:
                raise ProcessError(
                    f"{self.name} exited with code {self._popen.returncode}; last log lines:\n{self.tail()}"
                )
            try:
                if probe():
                    return
            except Exception:  # noqa: S110 - any probe failure means "not ready yet"
                pass
            time.sleep(interval)
        raise ProcessError(f"{self.name} not ready after {timeout:.0f}s; last log lines:\n{self.tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after ``timeout``."""
        if self._popen is None:
            return
        if self._popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self._popen.wait(10)
        self._signal_group(signal.SIGKILL)  # stray grandchildren of the group, if any
        self._popen = None

    def kill(self) -> None:
        """kill -9, as a crash would: no chance to flush or deregister."""
        if self._popen is None:
            return
        self._signal_group(signal.SIGKILL)
        self._popen.wait(10)
        self._popen = None

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self._popen is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, sig)

    def tail(self, lines: int = 30) -> str:
        try:
            content = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(content[-lines:])


class NativeServer:
    """One infrastructure server of a profile: its home under the profile's state, stopped by its PID."""

    #: The folder under the profile's state directory, and the process name in logs.
    name: str = "server"
    #: How long SIGTERM is given before SIGKILL.
    stop_timeout: float = 30.0

    def __init__(self, profile: str, ports: Ports) -> None:
        self.profile = profile
        self.ports = ports
        self.home = state_dir(profile) / self.name
        self._process: ManagedProcess | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop(timeout=self.stop_timeout)
            self._process = None

    def kill(self) -> None:
        """kill -9, as a crash would (used by the reliability tests)."""
        if self._process is not None:
            self._process.kill()
            self._process = None
