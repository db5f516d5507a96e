"""The tamper-evident audit log: the event schema and its hash chain (:mod:`.chain`), and
the log as the service writes and checks it (:mod:`.log`)."""
