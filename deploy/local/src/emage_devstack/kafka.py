"""Apache Kafka 4.x in KRaft mode (broker and controller in one JVM), from Maven Central jars."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

from .java import find_java_home
from .paths import cache_dir, repo_root
from .process import ManagedProcess, NativeServer

KAFKA_POM = repo_root() / "deploy" / "local" / "kafka" / "pom.xml"

#: Topics of ARCHITECTURE.md with their partition counts. Imaging topics are keyed by StudyInstanceUID and
#: patient topics by patient key, so partitions bound the parallelism of each consumer group.
TOPICS: dict[str, int] = {
    "emage.acquisition.v1": 6,
    "emage.instance.stored.v1": 12,
    "emage.study.changed.v1": 6,
    "emage.consent.changed.v1": 6,
    "emage.share.changed.v1": 6,
    "emage.access.decided.v1": 12,
}


def _pom_version_key() -> str:
    import hashlib

    return hashlib.sha256(KAFKA_POM.read_bytes()).hexdigest()[:12]


def kafka_libs() -> Path:
    """The runtime classpath, resolved once per pom content into the shared cache."""
    libs = cache_dir() / f"kafka-{_pom_version_key()}" / "libs"
    marker = libs.parent / ".complete"
    if marker.exists():
        return libs
    if shutil.which("mvn") is None:
        raise RuntimeError("Maven (mvn) is needed to fetch Kafka from Maven Central")
    tmp = libs.parent / "libs.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(KAFKA_POM),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={tmp}",
        ],
        check=True,
    )
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    marker.touch()
    return libs


class KafkaServer(NativeServer):
    """A single-node KRaft cluster bound to 127.0.0.1, with its log dirs under the profile's state."""

    name = "kafka"

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.ports.kafka}"

    def provision(self) -> None:
        kafka_libs()

    def _java(self) -> str:
        return str(find_java_home(17, "EMAGE_KAFKA_JAVA_HOME") / "bin" / "java")

    def _write_config(self, wipe: bool) -> Path:
        if wipe:
            shutil.rmtree(self.home, ignore_errors=True)
        data = self.home / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.home / "server.properties"
        config.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.bootstrap.servers=127.0.0.1:{self.ports.kafka_controller}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.ports.kafka},"
                    f"CONTROLLER://127.0.0.1:{self.ports.kafka_controller}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.ports.kafka}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    f"log.dirs={data}",
                    "num.partitions=3",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=6",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "min.insync.replicas=1",
                    "default.replication.factor=1",
                    "group.initial.rebalance.delay.ms=0",
                    # Topics are created explicitly with their partition counts; a typo must not create one.
                    "auto.create.topics.enable=false",
                    # Durability of acknowledged events on a single node: flush is left to the OS page cache
                    # as in production Kafka; replication is what protects data in a real cluster.
                    "log.retention.hours=168",
                    "",
                ]
            )
        )
        if not (data / "meta.properties").exists():
            java = self._java()
            cp = f"{kafka_libs()}/*"
            cluster_id = (
                subprocess.run(
                    [java, "-cp", cp, "kafka.tools.StorageTool", "random-uuid"],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout.strip()
                or uuid.uuid4().hex
            )
            subprocess.run(
                [
                    java,
                    "-cp",
                    cp,
                    "kafka.tools.StorageTool",
                    "format",
                    "--standalone",
                    "-t",
                    cluster_id,
                    "-c",
                    str(config),
                ],
                check=True,
                capture_output=True,
            )
        log4j = self.home / "log4j2.yaml"
        log4j.write_text(
            "Configuration:\n  Appenders:\n    Console:\n      name: STDOUT\n"
            '      PatternLayout:\n        Pattern: "[%d] %p %m (%c)%n"\n'
            "  Loggers:\n    Root:\n      level: WARN\n      AppenderRef:\n        - ref: STDOUT\n"
            "    Logger:\n      - name: kafka.server.KafkaRaftServer\n        level: INFO\n"
        )
        return config

    def start(self, *, wipe: bool = False, timeout: float = 60) -> None:
        config = self._write_config(wipe)
        heap = os.environ.get("EMAGE_KAFKA_HEAP", "512m")
        self._process = ManagedProcess(
            "kafka",
            [
                self._java(),
                f"-Xms{heap}",
                f"-Xmx{heap}",
                "-XX:+UseG1GC",
                f"-Dlog4j2.configurationFile={self.home / 'log4j2.yaml'}",
                "-cp",
                f"{kafka_libs()}/*",
                "kafka.Kafka",
                str(config),
            ],
            self.home / "kafka.log",
        )
        self._process.start()
        self._process.wait_ready(self._accepts_connections, timeout)

    def _accepts_connections(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.ports.kafka), timeout=1):
            return True
