"""Entry points of V-Stack: the click CLIs."""
