"""The facerec package: pipeline, detection, decoding, matching, selection, evaluation, the
Python API and the command line."""
