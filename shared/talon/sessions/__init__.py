"""Sessions: durable threads around an agent (messages, turns, step journal, event log)."""
