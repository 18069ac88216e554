"""Sans-IO codecs of V-Stack: binary frames and HTTP helpers. No sockets, no trio."""
