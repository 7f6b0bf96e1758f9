"""The ``tunery`` command line: server commands and client commands over the official openai SDK."""
