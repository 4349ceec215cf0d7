"""What operators and staff use: dashboard, JSON API, fault injection, audit log, metrics."""
