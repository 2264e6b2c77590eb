"""The worker side: running a turn as journaled steps against models and tools."""
