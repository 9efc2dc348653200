"""The OWS protocol: parsing requests, rendering ExceptionReports, rewriting backend documents."""
