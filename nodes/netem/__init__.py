"""The network emulator: TCP proxies with faults in front of storage nodes, and their control API."""
