"""The server: enrolment, rounds, secure aggregation, registry, persistence (later issues)."""
