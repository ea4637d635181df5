"""stress: the harness.  Runner, CPU loop, schedulers, watchdog, reports, CLI."""
