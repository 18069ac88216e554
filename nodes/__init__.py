"""trio services of V-Stack: storage node (and, later, metadata, uploader, client)."""
