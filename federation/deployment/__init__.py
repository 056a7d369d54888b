"""The deployment engine: Flower SuperLink and SuperNode processes with TLS and site
authentication, the Control API client, and the PKI that secures them (docs/deployment.md).

- :mod:`federation.deployment.pki`: the coordinator's CA and server certificate, site key pairs.
- :mod:`federation.deployment.processes`: command lines of ``flower-superlink`` /
  ``flower-supernode``, a project-local ``FLWR_HOME``, running them in the foreground.
- :mod:`federation.deployment.control`: the Control API (``flwr`` CLI): enrolment, submitting a
  run, following it and reading its outcome back.
"""
