"""The system of record in SQL: the schema (:mod:`.schema`) and one repository per table
group."""
