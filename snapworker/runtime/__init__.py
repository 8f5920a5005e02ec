"""The worker at run time: wiring (``worker``), the sender task (``dispatch``), one batch to its outcome
(``sending``), results and settling (``results``), the last-resort guard (``guard``), counters (``stats``), the
process and its signals (``process``) and test-only crash points (``failpoints``).

Data flows one way: deliveries in, the core batches, calls out, results answered. The edges (``amqp``, ``cloud``)
never import this package.
"""
