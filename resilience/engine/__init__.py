"""Pure engines: rate-limit algorithms, the circuit breaker state machine, staff patterns. No Django."""
