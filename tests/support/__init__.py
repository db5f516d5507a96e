"""What tests share that is not a fixture: the bundled data, the in-process API client and
request bodies, the gateway process, the command line."""
