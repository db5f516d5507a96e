"""The ``facerec`` command line."""
