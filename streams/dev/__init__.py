"""Development tooling: a reader can skip it; the worker never imports it.

A local Kafka from Maven Central jars (``kafka_download``, ``localkafka``, ``kafka_command``),
its throwaway CA (``localca``), the whole stack as child processes (``devstack``) and the
bundled sample calls (``samples``). ``streams dev``, ``streams kafka`` and ``streams demo``
import it when they run, and the tests use it for their broker.
"""
