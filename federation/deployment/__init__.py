"""The deployment engine: a coordinator (Flower SuperLink behind nginx) and hospital sites
(Flower SuperNode + the site runner), with TLS, site authentication and a roster
(docs/deployment.md).

- :mod:`~federation.deployment.pki`: the coordinator's CA and server certificate, site key pairs.
- :mod:`~federation.deployment.state`: the coordinator's state folder and its exclusive lock.
- :mod:`~federation.deployment.roster`: the enrolled sites (site id, country, key fingerprint).
- :mod:`~federation.deployment.proxy`: nginx's configuration (the sites' face: Fleet API only).
- :mod:`~federation.deployment.processes`: command lines and environments of the processes.
- :mod:`~federation.deployment.lifecycle`: supervised process trees, stop signals.
- :mod:`~federation.deployment.coordinator`, :mod:`~federation.deployment.site`: the two
  long-running services.
- :mod:`~federation.deployment.site_runner`: answers a site's tasks with its installed code,
  refusing app bundles whose site-side code differs (:mod:`~federation.deployment.appcode`).
- :mod:`~federation.deployment.control`: the Control API (``flwr`` CLI): enrolment, submitting a
  run with its expected sites, following it and reading its outcome back.
- :mod:`~federation.deployment.flower_site`: every Flower internal the engine uses, with why.
"""
