"""What a namespace's manifests may make the platform do on their behalf: which secrets they
may resolve (operator grants) and where the worker may connect (egress policy)."""
