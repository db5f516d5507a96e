"""The test suite, laid out like the code (see each folder's __init__)."""
