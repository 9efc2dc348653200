"""The proxy benchmark: a fake OWS backend, a load harness and its report (``make bench``)."""
