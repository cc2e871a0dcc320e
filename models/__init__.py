"""models layer of Mia."""
