#!/bin/sh
# One-shot job: create every e-mage topic with its explicit partition count, idempotently, then exit 0.
# Reads "name partitions" lines from the topics file; blank lines and # comments are skipped.
set -eu

bootstrap="${KAFKA_BOOTSTRAP_SERVERS:-kafka:9092}"
replication_factor="${TOPIC_REPLICATION_FACTOR:-1}"
topics_file="${TOPICS_FILE:-/etc/emage/kafka/topics.txt}"
kafka_topics="${KAFKA_TOPICS_BIN:-/opt/kafka/bin/kafka-topics.sh}"

grep -v '^[[:space:]]*\(#\|$\)' "$topics_file" | while read -r topic partitions; do
    "$kafka_topics" --bootstrap-server "$bootstrap" --create --if-not-exists \
        --topic "$topic" --partitions "$partitions" --replication-factor "$replication_factor"
done

"$kafka_topics" --bootstrap-server "$bootstrap" --list
