"""The REST gateway (issue 3). So far: template protection and the audit log.

May import the core package, cryptography, SQL and Milvus clients; never torch.
"""
