"""The operator commands behind ``snapworker`` (``cli``): run, publish, results, check, schema, replay, top, demo
and simulate; ``broker`` is the one broker helper the tools and the demo share."""
