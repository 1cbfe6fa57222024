"""Serving: a registry model version packaged as a Bento, smoke-tested, and served.

* ``snapshot``: the user state a service needs to answer by user id (recent histories, purchases,
  propensity aggregates), cut from the dataset version and stored as a Bento model;
* ``api``: request and response schemas, shared by the services, the smoke test and the benchmark;
* ``next_item`` / ``propensity``: the BentoML services, one per model;
* ``package``: import from MLflow, build the Bento, start it with ``bentoml serve``, replay the
  offline evaluation's requests (parity check), and write the Bento tag back to the model version.
"""
