"""`streamval kafka`: run a local single-node Kafka broker (KRaft) for development and demos."""

from __future__ import annotations

import argparse
import sys
import time

from streamval.commands._common import Subparsers, add_command, settings_from_args

DESCRIPTION = """\
Manage a local single-node Apache Kafka broker (KRaft mode, broker and controller in one JVM).

The jars are resolved from Maven Central on first use (Java 17+ and Maven needed) and cached.
The broker listens on 127.0.0.1 (port from broker.port, or a free one), keeps its data under
broker.home, and keeps running after this command returns until `streamval kafka down`.

With KAFKA_BOOTSTRAP_SERVERS set to another cluster, `up` starts nothing (streamval uses that
cluster); set to the local broker's address (as `up` suggests), `up` acts on the local broker.
`down` and `status` always act on the local broker in broker.home and say what
KAFKA_BOOTSTRAP_SERVERS points at.

actions:
  up       start the broker (if not running), create the topics, print the bootstrap address
  status   print whether it runs and its address; exit 0 if it is up, 1 if not
  down     stop the broker (its data is kept; --purge deletes it)
  topics   create any missing streamval topic and list the topics with partition counts
"""


def register(sub: Subparsers) -> None:
    parser = add_command(
        sub, "kafka", help="start/stop/inspect a local Kafka broker", description=DESCRIPTION
    )
    parser.add_argument("action", choices=["up", "down", "status", "topics"])
    parser.add_argument(
        "--port", type=int, help="broker port for `up` (default: broker.port or free)"
    )
    parser.add_argument("--no-topics", action="store_true", help="`up` without creating the topics")
    parser.add_argument(
        "--purge", action="store_true", help="`down` also deletes the broker's data"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from streamval.stream.kafka.broker import LocalBroker, resolve_bootstrap
    from streamval.stream.kafka.topics import describe, ensure_topics, topic_names

    settings = settings_from_args(args, **{"broker.port": args.port})
    external = settings.kafka.bootstrap_servers
    broker = LocalBroker(settings.broker)
    local_address = broker.address()
    points_here = bool(external) and external == local_address
    if external and not points_here and args.action == "up":
        print(
            f"using the external cluster {external} (KAFKA_BOOTSTRAP_SERVERS); nothing to up "
            f"(unset it to start the local broker in {broker.home})"
        )
        return 0
    if external and args.action in {"down", "status"}:
        target = "the local broker" if points_here else f"another cluster, not {broker.home}"
        print(f"KAFKA_BOOTSTRAP_SERVERS={external} is {target}; acting on the local broker")
    if args.action == "up":
        t0 = time.monotonic()
        state = broker.start()
        if not args.no_topics:
            ensure_topics(settings.with_bootstrap(state.bootstrap))
        print(state.bootstrap)
        print(
            f"Kafka {state.kafka_version} up at {state.bootstrap} (pid {state.pid}, "
            f"{time.monotonic() - t0:.1f} s); export KAFKA_BOOTSTRAP_SERVERS={state.bootstrap} "
            f"for other clients; log: {broker.log_file}",
            file=sys.stderr,
        )
        return 0
    if args.action == "down":
        stopped = broker.stop()
        if args.purge:
            import shutil

            shutil.rmtree(broker.home, ignore_errors=True)
        print(f"stopped (home {broker.home})" if stopped else f"not running (home {broker.home})")
        return 0
    if args.action == "status":
        current = broker.state()
        if current is None:
            print(f"local broker not running (home {broker.home})")
            return 0 if external and not points_here else 1
        uptime = time.time() - current.started_at
        print(
            f"running at {current.bootstrap} (Kafka {current.kafka_version}, "
            f"pid {current.pid}, up {uptime:.0f} s)"
        )
        return 0
    # topics
    bootstrap = resolve_bootstrap(settings)
    configured = settings.with_bootstrap(bootstrap)
    ensure_topics(configured)
    for name, partitions in sorted(describe(configured).items()):
        mark = "*" if name in topic_names(configured) else " "
        print(f"{mark} {name}  partitions={partitions}")
    return 0
