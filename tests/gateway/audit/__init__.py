"""The audit log: what it records, its chain and head, grouped appends."""
