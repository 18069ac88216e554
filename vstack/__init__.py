"""Domain core of V-Stack: storage engine, policies and pure logic. No sockets."""
