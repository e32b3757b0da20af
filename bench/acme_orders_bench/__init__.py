"""`acme-orders bench`: the pipeline's throughput and latency under load, and its ceilings.

system.py brings the system up on a fresh database and vhost and down again; load.py and load.lua
drive wrk; measure.py takes the figures from the database and /proc; ceilings.py (with
broker_load.py) measures the database alone and the broker alone; report.py prints and writes the
results; drain.py is --drain (the publisher alone against a backlog); runner.py puts it
together.
"""
