"""The uploader service: video files in, chunks on the storage nodes out (see :mod:`.service`)."""
