"""Bearer-token authentication and the principal each request acts as."""
