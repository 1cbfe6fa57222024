"""Serving: a registry model version packaged as a Bento, smoke-tested, and served; nothing here
knows a family (each family's service and request schemas live in its folder,
``pipeline.families.<family>.service`` and ``.serving``).

* ``snapshot``: the tables a family's service looks up per request (``ModelSpec.snapshot_tables``),
  cut from the dataset version and stored as a Bento model, with their rows found by key;
* ``api``: what every service's schemas share (the strict base, ids, the ``/metadata`` answer);
* ``common``, ``batching``, ``guard``, ``predlog``: build arguments, micro-batching, request
  limits, the prediction log, shadow and canary traffic;
* ``generic``: a service for any pyfunc that takes rows of columns;
* ``package``: import from MLflow, build the Bento, start it with ``bentoml serve``, replay the
  offline evaluation's requests (parity check), and write the Bento tag back to the model version;
* ``replay``: a day of raw sessions as requests against a served model.
"""
