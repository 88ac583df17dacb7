"""``streams kafka``: a local broker in the foreground, plain or secured like a managed Kafka.

Run it with ``streams kafka --port 9092`` (or ``python -m streams.dev.kafka_command``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path

from streams.dev.kafka_download import (
    KAFKA_VERSION,
    BrokerStartError,
    default_cache_dir,
    ensure_jars,
)
from streams.dev.localkafka import DEFAULT_PORT, LocalKafka
from streams.kafka_security import KafkaSecurity

__all__ = ["main"]

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    """Run a broker in the foreground until Ctrl-C or SIGTERM; return the exit code."""
    parser = argparse.ArgumentParser(
        prog="streams kafka", description=f"Run a local Apache Kafka {KAFKA_VERSION} broker."
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="9092; 0 picks a free one")
    parser.add_argument("--cache-dir", type=Path, help="jars ($STREAMS_CACHE_DIR or ./.cache)")
    parser.add_argument("--run-dir", type=Path, help="keep config, data and log across runs")
    parser.add_argument(
        "--secure",
        action="store_true",
        help="like a managed Kafka: SASL_SSL (PLAIN, SCRAM) on --port, mTLS on --ssl-port, "
        "users admin (super user) and worker (ACLs for the worker's topics and group)",
    )
    parser.add_argument("--ssl-port", type=int, default=0, help="mTLS port with --secure; 0: any")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # One "Loading SSL CA" and "Authenticated as" line per connection would bury the help.
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    # SIGTERM behaves like Ctrl-C, so a download, a start or the wait all end in the same cleanup;
    # the default SIGTERM action would leave the JVM running. SIGINT is set too because a
    # background job inherits it ignored.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.default_int_handler)
    broker = None
    try:
        started = time.monotonic()
        libs = ensure_jars(args.cache_dir or default_cache_dir())
        jars_s = time.monotonic() - started
        broker = LocalKafka(
            libs,
            port=args.port or None,
            run_dir=args.run_dir,
            secure=args.secure,
            ssl_port=args.ssl_port or None,
        )
        broker.start()
        if broker.secure:
            _grant_worker(broker)
        print(
            f"Kafka {KAFKA_VERSION} ready at {broker.bootstrap} "
            f"(jars {jars_s:.1f} s, broker start {broker.started_in_s:.1f} s); "
            f"log {broker.log_path}. Ctrl-C to stop.",
            flush=True,
        )
        if broker.secure:
            print(_secure_help(broker), flush=True)
        while broker.is_running:
            time.sleep(0.5)
        print(f"error: {broker.failure('the broker exited')}", file=sys.stderr)
        return 1
    except BrokerStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Stopping Kafka.", flush=True)
        return 0
    finally:
        if broker is not None:
            broker.close()


def _grant_worker(broker: LocalKafka) -> None:
    from streams.config import Settings
    from streams.kafka_acls import worker_acls

    # The topic names and app id the worker will run with: this shell's STREAMS_* settings,
    # or the defaults when they (or KAFKA_* settings meant for another cluster) do not load.
    try:
        settings = Settings()
    except ValueError:
        settings = Settings.model_construct()
    bindings = worker_acls(settings, "User:worker")
    broker.grant(bindings)
    for binding in bindings:
        log.info("ACL: %s", binding)


def _secure_help(broker: LocalKafka) -> str:
    def export(bootstrap: str, security: KafkaSecurity, user: str | None) -> str:
        password_file = broker.secrets_dir / f"{user}.password" if user else None
        env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, **security.env(password_file=password_file)}
        return "  export " + " ".join(f"{k}={v}" for k, v in env.items())

    return "\n".join(
        [
            "Secured: no anonymous port. Settings for a shell, by principal:",
            "worker (SASL_SSL, SCRAM-SHA-512; may only read recordings, write transcripts, "
            "use its own group and faust topics) for `streams worker`:",
            export(broker.bootstrap, broker.security("worker"), "worker"),
            "admin (super user) for `streams publish`, `streams tail`, `streams topics`:",
            export(broker.bootstrap, broker.security("admin"), "admin"),
            "worker over mTLS (client certificate, CN=worker) instead of a password:",
            export(broker.ssl_bootstrap, broker.mtls_security("worker"), None),
            "PLAIN and SCRAM-SHA-256 work too (KAFKA_SASL_MECHANISM).",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
