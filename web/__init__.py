"""The web page on port 8085 (see :mod:`web.service`)."""
