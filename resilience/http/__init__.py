"""The HTTP edge: middleware, code guards, client address and principal, stale copies."""
