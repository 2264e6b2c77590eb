"""Talon's own launcher for a function's Flask app (`python -m talon.serve`), see __main__."""
