"""features layer of Mia."""
