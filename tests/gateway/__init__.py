"""The gateway (gateway/): its fixtures are in conftest.py; scripts/test.sh reruns every
test_gateway_*.py here on the Triton backend."""
