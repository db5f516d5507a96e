"""The service layer, independent of HTTP: what the routes and the CLI call.

:mod:`.faces` (subjects, enrolment, verification, identification), :mod:`.admin` (access
checks, API keys, the audit log), :mod:`.jobs` (asynchronous identification) and
:mod:`.types` (what they take and return).
"""
