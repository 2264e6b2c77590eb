"""Schedules: when they fire (cron in a time zone), and the backends that wake sessions."""
