"""The worker at run time: wiring (``worker``), reading deliveries (``intake``), widening the prefetch window
(``widening``), the Sender that turns ready keys into granted calls (``sender``), one batch's calls (``calls``,
``call_parts``, ``batch_lease``), a batch's outcome to results (``outcomes``), publishing and settling
(``results``), broker sessions and the drain (``sessions``), tasks that own deliveries (``tasks``), the
background loops' supervisor (``supervisor``), the last-resort guard (``guard``) and the process and its signals
(``process``).

Data flows one way: deliveries in, the core batches, calls out, results answered. The edges (``amqp``, ``cloud``)
and the services (``idempotency``, ``tracking``, ``ops``) never import this package.
"""
