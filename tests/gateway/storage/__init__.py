"""The SQL system of record, start-up repair and migration."""
