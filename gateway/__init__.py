"""The REST gateway (``facerec serve``): enrolment, verification and identification over
HTTP, with API keys, encrypted templates, a protected Milvus index and a hash-chained audit
log. The README's "Layout" section lists its modules.

May import the core package, cryptography, SQL and Milvus clients; never torch.
"""
