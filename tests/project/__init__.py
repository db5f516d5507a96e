"""The project around the code: documentation, deployment files, examples, dependency
boundaries."""
