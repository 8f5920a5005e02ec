"""The RabbitMQ edge: the only package that speaks aio-pika and aiormq; their errors become ``BrokerError``.

- ``session``: one session = a consuming and a publishing connection, the declared topology, deliveries and settling.
- ``publish``: the confirmed publish fast path (sizes checked before the channel is touched, tags rolled back).
- ``errors``: which broker refusals are permanent (a wrong password, an unknown vhost).
- ``partitioning`` (pure) and ``partitions``: key affinity for a fleet, a router and a partition claimer.
"""
