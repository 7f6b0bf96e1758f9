"""Wire models named as in the ``openai`` SDK; each converts from the domain with ``from_domain``."""
