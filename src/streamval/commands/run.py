"""`streamval run`: the valuation service (consume asset-events, publish valuations and metrics)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from types import FrameType

from streamval.commands._common import Subparsers, add_command, settings_from_args
from streamval.config import Settings

log = logging.getLogger(__name__)

DESCRIPTION = """\
Run the valuation engine as a Kafka consumer-group member.

It polls the input topic (topics.input, default asset-events), dead-letters bad messages to
topics.dlq with the reason in the `error` header, values every valid event with the cluster's
model before learning from it, publishes valuations to topics.valuations and per-cluster metric
snapshots plus drift alarms to topics.metrics, and commits offsets only after those outputs are
acknowledged (at-least-once; --exactly-once uses Kafka transactions). Several processes with the
same group id split the partitions and share one clustering (the clusterings topic).

--role splits valuing from learning (consumer.role): `valuer` processes value as above but send
every labelled sample to the training-samples topic (keyed by cluster) and serve each cluster's
latest model from the compacted models topic; `learner` processes (consumer group
<group>.learners) train the clusters of their training-samples partitions and publish a
snapshot every consumer.model_every_steps steps. A restarted learner goes on from the latest
snapshots, a starting valuer serves them at once. The default, `all`, values and learns in one
process, as before.

Give every process its own --instance-id (recommended): with it a restarted process takes back
its partitions at once instead of after a 45-50 s rebalance, and in --exactly-once mode its
transactional id is stable, so it fences the dead process's transaction and goes on at once.

A bad message never stops the service: it goes to topics.dlq with its reason (invalid JSON,
wrong types, out-of-range times or values, an output that cannot be produced...). A broker
outage is retried with backoff for consumer.outage_timeout_s (default 300 s), then the service
exits with an error. A checkpoint that is corrupt, foreign (another group, topic or partition
count) or of an old format stops the service with the problem named, unless
--discard-checkpoint is given (the file is moved aside and the engine starts fresh).

With --history FILE (a long table: asset_id, ts, value, then feature and attribute columns,
CSV or Parquet) and no checkpoint to restore, the engine first learns from that history, so the
first live events meet fitted clusters and trained models instead of the warming fallback.

Prometheus metrics are served on http://monitoring.host:monitoring.port/metrics (default
127.0.0.1:9108), with /healthz and /readyz. SIGTERM or Ctrl-C finishes the current batch,
flushes, commits, checkpoints and exits 0.

The cluster comes from --bootstrap-servers, KAFKA_BOOTSTRAP_SERVERS or kafka.bootstrap_servers;
without one, a local broker started with `streamval kafka up` is used.
"""


def register(sub: Subparsers) -> None:
    parser = add_command(
        sub,
        "run",
        help="consume asset-events, publish valuations and metrics",
        description=DESCRIPTION,
    )
    parser.add_argument("--group", metavar="ID", help="consumer group id (consumer.group_id)")
    parser.add_argument(
        "--checkpoint-dir",
        metavar="DIR",
        help="checkpoint engine state + offsets here (consumer.checkpoint_dir)",
    )
    parser.add_argument(
        "--instance-id",
        metavar="ID",
        help="recommended: a name unique per process (e.g. engine-1). A restart within the "
        "session timeout keeps its partitions without a 45-50 s rebalance, and --exactly-once "
        "derives a stable transactional id from it (consumer.group_instance_id)",
    )
    parser.add_argument(
        "--discard-checkpoint",
        action="store_true",
        help="if the checkpoint is unusable (corrupt, foreign, old format), move it aside and "
        "start with a fresh engine instead of stopping",
    )
    parser.add_argument(
        "--history",
        metavar="FILE",
        help="learn from this long table (CSV/Parquet) before consuming, unless a checkpoint "
        "restores the engine (consumer.history)",
    )
    parser.add_argument(
        "--exactly-once",
        action="store_true",
        default=None,
        help="transactional outputs and offsets",
    )
    parser.add_argument(
        "--metrics-port", type=int, metavar="PORT", help="monitoring.port (0 = any free)"
    )
    parser.add_argument(
        "--role",
        choices=["all", "valuer", "learner"],
        help="all (default) = value and learn here; valuer = value, send samples to the "
        "learners; learner = train clusters, publish their models (consumer.role)",
    )
    parser.add_argument(
        "--exit-when-idle",
        type=int,
        metavar="N",
        help="stop after N consecutive empty polls (for batch runs and scripts)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from streamval.stream.kafka.broker import resolve_bootstrap

    settings = settings_from_args(
        args,
        **{
            "consumer.group_id": args.group,
            "consumer.checkpoint_dir": args.checkpoint_dir,
            "consumer.history": args.history,
            "consumer.group_instance_id": args.instance_id,
            "consumer.exactly_once": args.exactly_once,
            "monitoring.port": args.metrics_port,
            "consumer.role": args.role,
        },
    )
    settings = settings.with_bootstrap(resolve_bootstrap(settings))
    if settings.consumer.role == "learner":
        return _run_learner(settings, args)

    # Heavy imports (torch) only once the settings are known to be valid.
    from streamval.consumers.service import ValuationService, serve_metrics
    from streamval.engine import set_torch_threads

    set_torch_threads(settings.engine)
    if not settings.consumer.group_instance_id:
        log.info(
            "no --instance-id: a restart waits for a rebalance (45-50 s); give each process "
            "its own --instance-id to take its partitions back at once"
        )
    service = ValuationService(
        settings, progress=sys.stderr.isatty(), discard_checkpoint=args.discard_checkpoint
    )
    server = serve_metrics(service)
    if server is not None:
        print(json.dumps({"metrics": server.url}), flush=True)

    def _stop(signum: int, frame: FrameType | None) -> None:
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        service.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        service.run(max_idle_polls=args.exit_when_idle)
    finally:
        if server is not None:
            server.stop()
    print(
        json.dumps({"batches": service.batches, "published": service.published}),
        file=sys.stderr,
    )
    return 0


def _run_learner(settings: Settings, args: argparse.Namespace) -> int:
    """`--role learner`: train the clusters of this process's training-samples partitions."""
    from streamval.consumers.learner import LearnerService
    from streamval.engine import set_torch_threads
    from streamval.monitoring.server import MetricsServer

    set_torch_threads(settings.engine)
    service = LearnerService(settings)
    m = settings.monitoring
    server = None
    if m.enabled:  # the owned clusters' series and the learner's own on /metrics
        server = MetricsServer(service.metrics.registry, m.host, m.port, ready=service.ready)
        server.start()
        print(json.dumps({"metrics": server.url}), flush=True)

    def _stop(signum: int, frame: FrameType | None) -> None:
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        service.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        service.run(max_idle_polls=args.exit_when_idle)
    finally:
        if server is not None:
            server.stop()
    print(
        json.dumps({"trained": service.trained, "published": service.published, "role": "learner"}),
        file=sys.stderr,
    )
    return 0
