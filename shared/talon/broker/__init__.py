"""Message broker: a transactional outbox plus two drivers (PostgreSQL queue, Pub/Sub)."""
