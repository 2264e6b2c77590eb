"""PostgreSQL persistence: connections, migrations and the SQL behind each port."""
