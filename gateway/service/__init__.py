"""The service layer, independent of HTTP: what the routes and the CLI call.

The face operations, one concern each, over the shared :mod:`.analyzer` (decoding within
the budget, the pipeline behind the micro-batcher): :mod:`.subjects`, :mod:`.enrolment`,
:mod:`.verification` (1:1), :mod:`.identification` (1:N; the decision is
:mod:`.matching`'s), :mod:`.detection`; :mod:`.health` (readiness, models),
:mod:`.admin` (access checks, API keys, the audit log), :mod:`.jobs` (asynchronous
identification), :mod:`.video` and :mod:`.streams`, and :mod:`.types` (what they take and
return).
"""
